"""The state behind a ``GalleryIndex`` and the machinery that changes it: becoming the one writer, committing
batches of changes (group commit: validate, log with one write + fsync, apply, publish), following another
writer from a read-only process. Compaction (index/compactor.py) works on the same state.

``view`` is what readers take: replaced by one assignment, never changed. Everything else is changed only
under ``mutex``: by the batch leader, by compaction's seal and swap, by ``refresh``.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from index import compactor, wal
from index.base import load_base
from index.changes import encode
from index.compaction import CompactionPolicy
from index.errors import IndexCorruptError, StorageError
from index.groupcommit import GroupCommit
from index.lock import WriterLock
from index.media_gc import sweep_media
from index.replay import LogPosition, replay
from index.snapshot import clean_stale, read_current
from index.view import View
from index.working import Committed, Request, Working, prepare

log = logging.getLogger(__name__)


class Store:
    def __init__(self, index_dir: Path, working: Working, policy: CompactionPolicy, pos: LogPosition | None) -> None:
        self.dir = index_dir
        self.policy = policy
        self.working = working
        self.view: View = working.view()
        self.pos = pos  # where replay stopped (a reader follows the log from here)
        self.mutex = threading.RLock()  # a batch's commit, sealing, swapping a base in, refresh
        self.commit: GroupCommit[Request, Committed] = GroupCommit(self.run_batch)
        self.log: wal.LogWriter | None = None
        self.lock: WriterLock | None = None
        self.compacting = threading.Lock()  # one compaction at a time
        self.threads: list[threading.Thread] = []
        self.retry_at = 0.0  # no background compaction before (after a failed one)
        self.last_compaction_error: str | None = None
        self.closed = False

    def publish(self) -> None:
        self.view = self.working.view()

    # -- becoming the writer ----------------------------------------------------------------------------
    def ensure_writer(self) -> None:
        if self.log is not None:
            return
        with self.mutex:
            if self.log is not None:
                return
            if self.closed:
                raise RuntimeError(f"The gallery {self.dir} was closed.")
            lock = WriterLock.acquire(self.dir)
            try:
                self.become_writer(lock)
            except BaseException:
                lock.release()
                raise

    def become_writer(self, lock: WriterLock) -> None:
        self.catch_up(durable_only=False)  # what other writers did since this object loaded
        clean_stale(self.dir)
        self._drop_covered_segments()
        found = wal.segments(self.dir)
        if found:
            last = wal.read_segment(found[-1][1])
            self.log = wal.LogWriter.open(last.path, last.end, last.size)
        else:
            self.log = wal.LogWriter.create(self.dir, self.working.version + 1)
        self.lock = lock
        self.start(self.sweep_media, time.time())  # nothing older can be an add in flight now

    def _drop_covered_segments(self) -> None:
        """Delete the segments whose every record is in the base (compaction deletes them after the base
        swap; a crash in between leaves them)."""
        found = wal.segments(self.dir)
        for (_, path), (next_first, _) in itertools.pairwise(found):
            if next_first <= self.working.base.version + 1:
                path.unlink(missing_ok=True)

    # -- following another writer -----------------------------------------------------------------------
    def refresh(self) -> bool:
        with self.mutex:
            if self.log is not None:
                return False
            before = self.view.version
            self.catch_up(durable_only=True)
            return self.view.version != before

    def catch_up(self, durable_only: bool) -> None:
        for attempt in range(3):  # the writer may swap a base in and delete the log we were reading
            try:
                current = read_current(self.dir)
                if current != self.working.base.version:
                    m = self.working.base.manifest
                    self.working, self.pos = load(self.dir, m.model_hash, m.dim, durable_only)
                else:
                    self.pos = replay(self.dir, self.working, self.pos, durable_only=durable_only)
                break
            except (IndexCorruptError, FileNotFoundError):
                if attempt == 2 or read_current(self.dir) == self.working.base.version:
                    raise
        self.publish()

    # -- committing changes -----------------------------------------------------------------------------
    def submit(self, request: Request) -> Committed:
        self.ensure_writer()
        return self.commit.submit(request)

    def run_batch(self, requests: list[Request]) -> list[Committed | BaseException]:
        """The group commit's leader: validate, log with one write + fsync, apply, publish (or undo all)."""
        with self.mutex:
            if self.log is None:
                raise RuntimeError(f"The gallery {self.dir} is not open for writing (closed?).")
            w = self.working
            saved = w.save()
            results: list[Committed | BaseException] = []
            payloads: list[bytes] = []
            try:
                results, payloads = self._prepare_batch(requests)
                if payloads:
                    self.log.append(payloads)
            except StorageError as exc:
                w.restore(saved)  # nothing of the batch was published: no reader saw it
                return [r if isinstance(r, BaseException) else exc for r in results]
            except BaseException:
                w.restore(saved)
                raise
            if payloads:
                self.publish()
            compactor.maybe_compact(self)
        return results

    def _prepare_batch(self, requests: list[Request]) -> tuple[list[Committed | BaseException], list[bytes]]:
        """Validate and apply each request in turn (each sees the ones before it), encoding its record."""
        w = self.working
        results: list[Committed | BaseException] = []
        payloads = []
        now = time.time()
        for request in requests:
            view = w.view()
            try:
                change, result = prepare(view, request, now)
            except ValueError as exc:  # this request's own fault (say, too few vectors to train): only its
                results.append(exc)
                continue
            if change is not None:
                w.apply(w.version + 1, change, view)
                payloads.append(encode(w.version, change))
            results.append(Committed(w.version, result.ids, result.created))
        return results, payloads

    # -- housekeeping -----------------------------------------------------------------------------------
    def start(self, target: Callable[..., Any], *args: Any) -> None:
        self.threads = [t for t in self.threads if t.is_alive()]
        thread = threading.Thread(target=target, args=args, name=f"gallery-{target.__name__}", daemon=True)
        self.threads.append(thread)
        thread.start()

    def sweep_media(self, older_than: float) -> None:
        try:
            sweep_media(self.dir / "media", lambda: self.view, older_than)
        except Exception:  # a sweep is housekeeping: it must never take the gallery down
            log.exception("media sweep of %s failed", self.dir)

    def close(self, compact: bool) -> None:
        if self.closed:
            return
        if compact and self.log is not None and self.view.version != self.view.base.version:
            try:
                compactor.compact(self)
            except StorageError as exc:  # folding in is an optimisation: the log still holds every change
                log.warning("%s: compaction on close failed, the log is kept (replayed on open): %s", self.dir, exc)
        for thread in list(self.threads):
            thread.join()
        with self.mutex:
            self.closed = True
            if self.log is not None:
                self.log.close()
            if self.lock is not None:
                self.lock.release()
            self.log = self.lock = None


def load(
    index_dir: Path,
    model_hash: str | None,
    dim: int | None,
    durable_only: bool = True,
    precision: str | None = None,
) -> tuple[Working, LogPosition | None]:
    """The base ``CURRENT`` names, brought up to date by the log (retried if a compaction swaps it meanwhile)."""
    for attempt in range(3):
        version = read_current(index_dir)
        assert version is not None
        try:
            working = Working.at(load_base(index_dir, version, model_hash=model_hash, dim=dim, precision=precision))
            return working, replay(index_dir, working, None, durable_only=durable_only)
        except (IndexCorruptError, FileNotFoundError):
            if attempt == 2 or read_current(index_dir) == version:
                raise
    raise AssertionError("unreachable")
