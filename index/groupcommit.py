"""Group commit: concurrent writers share one log write and one fsync (leader/follower).

A writer queues its request and, if no batch is being written, becomes the leader: it takes everything
queued so far and runs it as one batch, outside the queue's lock, while the writers that arrive meanwhile
queue up for the next batch. When the batch is done the leader hands each writer its own result (a value
or an exception) and wakes them. So one fsync acknowledges every change of its batch, and under load the
batches grow by themselves: no timer, no added latency for a writer that is alone.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

In = TypeVar("In")
Out = TypeVar("Out")


@dataclass
class _Slot(Generic[In, Out]):
    request: In
    done: bool = False
    result: Out | None = None
    error: BaseException | None = None


@dataclass
class GroupCommit(Generic[In, Out]):
    """``submit(request)`` runs ``run_batch([requests...])`` for a batch of concurrent submitters.

    ``run_batch`` returns one result per request, in order: a value, or an exception to raise in that
    request's writer. Batches never overlap: ``run_batch`` may assume it is the only one running."""

    run_batch: Callable[[list[In]], list[Out | BaseException]]
    batches: int = 0  # how many batches ran (one fsync each): the tests compare it with the writes
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _queue: list[_Slot[In, Out]] = field(default_factory=list)
    _leading: bool = False

    def submit(self, request: In) -> Out:
        slot: _Slot[In, Out] = _Slot(request)
        batch: list[_Slot[In, Out]] = []
        with self._cond:
            self._queue.append(slot)
            while self._leading and not slot.done:
                self._cond.wait()
            if not slot.done:  # nobody is writing: lead a batch of everything queued
                self._leading = True
                batch, self._queue = self._queue, []
        if batch:
            self._lead(batch)
        if slot.error is not None:
            raise slot.error
        return slot.result  # type: ignore[return-value]

    def _lead(self, batch: list[_Slot[In, Out]]) -> None:
        outcomes: list[Out | BaseException]
        try:
            outcomes = self.run_batch([s.request for s in batch])
            if len(outcomes) != len(batch):
                raise RuntimeError(f"run_batch returned {len(outcomes)} results for {len(batch)} requests")
        except BaseException as exc:  # every writer of the batch learns why, the leader included
            outcomes = [exc] * len(batch)
        with self._cond:
            for s, outcome in zip(batch, outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    s.error = outcome
                else:
                    s.result = outcome
                s.done = True
            self.batches += 1
            self._leading = False
            self._cond.notify_all()
