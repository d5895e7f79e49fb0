"""Dynamic batching: concurrent requests' images go through the model in one forward pass.

Requests first ``admit`` their images against a bounded queue (the excess is refused at once, before any
decoding), then ``submit`` the prepared inputs. One worker task gathers what is waiting; while the batch is
below ``max_batch`` and other admitted requests are still on their way, it waits at most ``max_wait_s`` for
them. Forward passes run on ``instances`` dedicated threads (Triton's model instances: on a CPU, one
single-threaded model call per core beats one call that spreads over every core and waits at its barriers),
so the event loop never blocks. A batch is formed only when an instance is free: while every instance is busy,
new requests queue up and form the next, larger batch (Triton's dynamic batcher, in miniature).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np

log = logging.getLogger(__name__)

T = TypeVar("T")


class QueueFullError(RuntimeError):
    """More images are admitted than the queue holds; the caller should retry later."""


class BatcherClosedError(RuntimeError):
    """The batcher is shutting down and takes no new work."""


@dataclass
class _Job(Generic[T]):
    items: Sequence[T]
    future: asyncio.Future[np.ndarray] = field(repr=False)


class DynamicBatcher(Generic[T]):
    def __init__(
        self,
        embed_fn: Callable[[list[T]], np.ndarray],
        *,
        max_batch: int = 32,
        max_wait_s: float = 0.003,
        max_queue: int = 128,
        enabled: bool = True,
        instances: int = 1,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        if max_batch < 1 or max_queue < 1 or max_wait_s < 0 or instances < 1:
            raise ValueError("max_batch, max_queue and instances must be >= 1 and max_wait_s >= 0.")
        self.embed_fn, self.max_batch, self.max_wait_s = embed_fn, max_batch, max_wait_s
        self.max_queue, self.enabled, self.on_batch = max_queue, enabled, on_batch
        self.instances = instances
        self.depth = 0  # images admitted and not finished: waiting, decoding or in a forward pass
        self.running = 0  # images in forward passes now
        self.batches = 0
        self._pending: deque[_Job[T]] = deque()
        self._wakeup = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(max_workers=instances, thread_name_prefix="imgsim-embed")

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="imgsim-batcher")

    @contextmanager
    def admit(self, n: int) -> Iterator[None]:
        """Reserve room for ``n`` images for the duration of a request, or refuse at once."""
        if self._closing:
            raise BatcherClosedError("The service is shutting down.")
        if self.depth + n > self.max_queue:
            raise QueueFullError(f"{self.depth} images are queued; the queue holds {self.max_queue}.")
        self.depth += n
        try:
            yield
        finally:
            self.depth -= n

    async def submit(self, items: Sequence[T]) -> np.ndarray:
        """Embed ``items`` (in a shared batch) and return their rows, in order."""
        if self._task is None:
            raise BatcherClosedError("The batcher is not running.")
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self._pending.append(_Job(items, future))
        self._wakeup.set()
        return await future

    async def close(self) -> None:
        """Finish everything queued, then stop the worker and its thread."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
            self._task = None
        self._executor.shutdown(wait=True)

    async def _next_batch(self) -> list[_Job[T]]:
        batch = [self._pending.popleft()]
        size = len(batch[0].items)
        if not self.enabled:
            return batch
        deadline = asyncio.get_running_loop().time() + self.max_wait_s
        while size < self.max_batch:
            if self._pending:
                if size + len(self._pending[0].items) > self.max_batch:
                    break
                job = self._pending.popleft()
                batch.append(job)
                size += len(job.items)
                continue
            if self.depth - self.running <= size:
                break  # nobody else is on the way (decoding or queued): waiting would only add latency
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0 or self._closing:
                break
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                break
        return batch

    async def _run(self) -> None:
        free = asyncio.Semaphore(self.instances)
        passes: set[asyncio.Task[None]] = set()
        while True:
            while not self._pending:
                if self._closing:
                    await asyncio.gather(*passes)
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
            await free.acquire()  # the batch is formed when an instance can take it: larger batches under load
            batch = await self._next_batch()
            task = asyncio.get_running_loop().create_task(self._forward(batch, free))
            passes.add(task)
            task.add_done_callback(passes.discard)

    async def _forward(self, batch: list[_Job[T]], free: asyncio.Semaphore) -> None:
        items: list[Any] = [item for job in batch for item in job.items]
        self.running += len(items)
        try:
            out = await asyncio.get_running_loop().run_in_executor(self._executor, self.embed_fn, items)
        except Exception as exc:  # handed to every waiting request, which maps it to an answer
            log.exception("forward pass over %d images failed", len(items))
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(exc)
            return
        finally:
            self.running -= len(items)
            free.release()
        self.batches += 1
        if self.on_batch is not None:
            self.on_batch(len(items))
        start = 0
        for job in batch:
            if not job.future.done():
                job.future.set_result(out[start : start + len(job.items)])
            start += len(job.items)
