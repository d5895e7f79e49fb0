"""``GalleryIndex``: a log-structured gallery. Base snapshot + write-ahead log + in-memory delta, compacted.

- A change (add, remove, relabel, settings) is one log record, appended and fsynced before it is
  acknowledged; concurrent writers share one fsync (``groupcommit``). Nothing in its path is O(gallery).
- Reads take the published :class:`~index.view.View` (base + a prefix of each delta) once and use only it:
  a search sees one whole version while writes go on. Publishing a version is one assignment.
- When the delta passes the :class:`CompactionPolicy` thresholds, a background thread seals it (new writes
  go to a fresh delta and log segment), folds it into a new base snapshot, swaps the base in and deletes
  the log segments the base covers. Also on :meth:`compact` and ``close(compact=True)``.
- Open = load ``CURRENT``'s snapshot + replay the log. One process writes (``index/lock.py``), taking the
  lock at its first write or with ``open(writer=True)``; any number read, and :meth:`refresh` to follow.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from index import factory as fx
from index import wal
from index.base import Base, load_base
from index.changes import encode
from index.compaction import CompactionPolicy, build_base, due, write_faiss
from index.errors import IndexCorruptError, StorageError
from index.groupcommit import GroupCommit
from index.lock import WriterLock
from index.media_gc import sweep_media
from index.metadata import write_metadata
from index.records import Hit, ItemRecord, NewItem
from index.replay import LogPosition, replay
from index.search import run_search
from index.snapshot import INDEX_FILE, META_FILE, Manifest, clean_stale, read_current, write_snapshot
from index.view import View
from index.working import (
    AddRequest,
    Committed,
    RelabelRequest,
    RemoveRequest,
    Request,
    SettingsRequest,
    Working,
    prepare,
)

log = logging.getLogger(__name__)
__all__ = ["Committed", "CompactionPolicy", "GalleryIndex"]


class GalleryIndex:
    def __init__(self, index_dir: Path, working: Working, policy: CompactionPolicy, pos: LogPosition | None) -> None:
        self._dir = index_dir
        self._policy = policy
        self._working = working
        self._view = working.view()
        self._pos = pos  # where replay stopped (a reader follows the log from here)
        self._mutex = threading.RLock()  # a batch's commit, sealing, swapping a base in, refresh
        self._commit: GroupCommit[Request, Committed] = GroupCommit(self._run_batch)
        self._log: wal.LogWriter | None = None
        self._lock: WriterLock | None = None
        self._compacting = threading.Lock()  # one compaction at a time
        self._threads: list[threading.Thread] = []
        self._retry_at = 0.0
        self.last_compaction_error: str | None = None
        self._closed = False

    # ----------------------------------------------------------------- create / open / close
    @classmethod
    def create(
        cls,
        index_dir: str | Path,
        *,
        model_hash: str,
        backbone: str,
        dim: int,
        gallery_root: str | Path | None = None,
        factory: str | None = None,
        checkpoint: str | Path | None = None,
        policy: CompactionPolicy | None = None,
        rerank: bool = False,
    ) -> GalleryIndex:
        """An empty gallery in ``index_dir`` (which must not hold one yet), as base version 1; it writes.

        ``rerank``: keep an 8-bit copy of the base's vectors on disk and re-rank the index's candidates
        with it (for compressed PQ types: index/rerank.py); made by the first compaction."""
        index_dir = Path(index_dir)
        if (index_dir / "CURRENT").exists():
            raise ValueError(f"{index_dir} already holds an index. Open it, or remove it / choose another folder.")
        index_dir.mkdir(parents=True, exist_ok=True)
        lock = WriterLock.acquire(index_dir)
        try:
            index, used = fx.make_index(factory or fx.DEFAULT_FACTORY, dim)
            manifest = Manifest(
                version=1,
                model_hash=model_hash,
                backbone=backbone,
                dim=dim,
                count=0,
                factory=used,
                created=time.time(),
                gallery_root=str(Path(gallery_root).resolve()) if gallery_root else None,
                checkpoint=str(checkpoint) if checkpoint else None,
                search_params=fx.current_search_params(index),
                rerank=rerank,
            )

            def write_files(folder: Path) -> None:
                write_faiss(index, folder / INDEX_FILE)
                write_metadata([], folder / META_FILE)

            folder = write_snapshot(index_dir, manifest, write_files)
            gi = cls(index_dir, Working.at(Base(folder, manifest, index, {})), policy or CompactionPolicy(), None)
            gi._become_writer(lock)
        except BaseException:
            lock.release()
            raise
        return gi

    @classmethod
    def open(
        cls,
        index_dir: str | Path,
        *,
        model_hash: str | None = None,
        dim: int | None = None,
        writer: bool = False,
        policy: CompactionPolicy | None = None,
    ) -> GalleryIndex:
        """Load ``CURRENT``'s base (verifying the model, the dimension and every checksum) and replay the log.

        ``writer=True`` takes the writer lock now (else at the first change)."""
        index_dir = Path(index_dir)
        if not (index_dir / "CURRENT").is_file():
            raise FileNotFoundError(f"No index at {index_dir}. Build one with `imgsim index build`.")
        working, pos = _load(index_dir, model_hash, dim)
        gi = cls(index_dir, working, policy or CompactionPolicy(), pos)
        log.info(
            "opened %s version %d: %d items (%s; base %d + %d changes in the log)",
            index_dir,
            gi.version,
            gi.count,
            working.base.manifest.factory,
            working.base.version,
            gi._view.changes,
        )
        if writer:
            gi.ensure_writer()
        return gi

    def close(self, compact: bool = False) -> None:
        """Stop writing: optionally fold the log into a new base first (the service's clean shutdown),
        wait for a compaction under way, release the writer lock. Reads keep working on what was loaded."""
        if self._closed:
            return
        if compact and self._log is not None and self._view.version != self._view.base.version:
            self.compact()
        for thread in list(self._threads):
            thread.join()
        with self._mutex:
            self._closed = True
            if self._log is not None:
                self._log.close()
            if self._lock is not None:
                self._lock.release()
            self._log = self._lock = None

    def __enter__(self) -> GalleryIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- becoming the writer
    def ensure_writer(self) -> None:
        """Take the writer lock (if this object does not hold it yet) and catch up with the disk.

        Raises :class:`~index.errors.IndexConflictError` naming the process that writes instead."""
        if self._log is not None:
            return
        with self._mutex:
            if self._log is not None:
                return
            if self._closed:
                raise RuntimeError(f"The gallery {self._dir} was closed.")
            lock = WriterLock.acquire(self._dir)
            try:
                self._become_writer(lock)
            except BaseException:
                lock.release()
                raise

    def _become_writer(self, lock: WriterLock) -> None:
        self._catch_up(durable_only=False)  # what other writers did since this object loaded
        clean_stale(self._dir)
        self._drop_covered_segments()
        found = wal.segments(self._dir)
        if found:
            last = wal.read_segment(found[-1][1])
            self._log = wal.LogWriter.open(last.path, last.end, last.size)
        else:
            self._log = wal.LogWriter.create(self._dir, self._working.version + 1)
        self._lock = lock
        self._start(self._sweep_media, time.time())  # nothing older can be an add in flight now

    def _drop_covered_segments(self) -> None:
        """Delete the segments whose every record is in the base (compaction deletes them after the base
        swap; a crash in between leaves them)."""
        found = wal.segments(self._dir)
        for (_, path), (next_first, _) in itertools.pairwise(found):
            if next_first <= self._working.base.version + 1:
                path.unlink(missing_ok=True)

    # ----------------------------------------------------------------- following the writer
    def refresh(self) -> bool:
        """Catch up with the writer (another process): its newer log records or its new base. A reader calls
        this to follow; the writer is always current. Returns whether the version moved."""
        with self._mutex:
            if self._log is not None:
                return False
            before = self._view.version
            self._catch_up(durable_only=True)
            return self._view.version != before

    def _catch_up(self, durable_only: bool) -> None:
        for attempt in range(3):  # the writer may swap a base in and delete the log we were reading
            try:
                current = read_current(self._dir)
                if current != self._working.base.version:
                    m = self._working.base.manifest
                    self._working, self._pos = _load(self._dir, m.model_hash, m.dim, durable_only)
                else:
                    self._pos = replay(self._dir, self._working, self._pos, durable_only=durable_only)
                break
            except (IndexCorruptError, FileNotFoundError):
                if attempt == 2 or read_current(self._dir) == self._working.base.version:
                    raise
        self._view = self._working.view()

    # ----------------------------------------------------------------- properties
    @property
    def version(self) -> int:
        return self._view.version

    @property
    def count(self) -> int:
        return self._view.count

    @property
    def ntotal(self) -> int:
        """Vectors searched: the base's not removed plus the deltas' live ones (= ``count``)."""
        return self._view.count

    @property
    def base_version(self) -> int:
        return self._view.base.version

    @property
    def pending(self) -> int:
        """Changes in the log and the delta, not yet compacted into the base."""
        return self._view.changes

    @property
    def dim(self) -> int:
        return self._view.base.manifest.dim

    @property
    def model_hash(self) -> str:
        return self._view.base.manifest.model_hash

    @property
    def backbone(self) -> str:
        return self._view.base.manifest.backbone

    @property
    def factory(self) -> str:
        return self._view.base.manifest.factory

    @property
    def index_dir(self) -> Path:
        return self._dir

    @property
    def checkpoint(self) -> str | None:
        value: str | None = self._view.settings.get("checkpoint")
        return value

    @property
    def gallery_root(self) -> Path | None:
        root = self._view.settings.get("gallery_root")
        return Path(root) if root else None

    @property
    def media_dir(self) -> Path:
        path = self._dir / "media"
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def fsyncs(self) -> int:
        """Batches this object has committed (one log write and one fsync each)."""
        return self._commit.batches

    def info(self) -> dict[str, Any]:
        view = self._view
        m = view.base.manifest
        return {
            "index_dir": str(self._dir),
            "version": view.version,
            "count": view.count,
            "dim": m.dim,
            "factory": m.factory,
            "model_hash": m.model_hash,
            "backbone": m.backbone,
            "created": m.created,
            "gallery_root": str(self.gallery_root) if self.gallery_root else None,
            "checkpoint": self.checkpoint,
            "search_params": view.search_params or fx.current_search_params(view.base.index),
            "labels": view.labels(),
            "base_version": view.base.version,
            "pending_changes": view.changes,
            "log_bytes": sum(p.stat().st_size for _, p in wal.segments(self._dir)),
            "writer": self._log is not None,
            "last_compaction_error": self.last_compaction_error,
        }

    # ----------------------------------------------------------------- reads (one view each)
    def view(self) -> View:
        """The published version: read several things from it to see them all at one version."""
        return self._view

    def search(self, vectors: np.ndarray, k: int, label: str | None = None) -> list[list[Hit]]:
        return run_search(self._view, self._check_vectors(vectors), k, label)

    def get(self, id: int) -> ItemRecord | None:
        return self._view.get(int(id))

    def items(self, offset: int = 0, limit: int = 50, label: str | None = None) -> tuple[list[ItemRecord], int]:
        if offset < 0 or limit < 0:
            raise ValueError("offset and limit must be >= 0.")
        return self._view.items(offset, limit, label)

    def all_records(self) -> Iterator[ItemRecord]:
        """Every item in id order, read a chunk at a time."""
        return self._view.iter_records()

    def id_for_sha(self, sha256: str) -> int | None:
        """The id of the item with this content, if it is indexed."""
        return self._view.id_for_sha(sha256)

    def vector(self, id: int) -> np.ndarray | None:
        return self._view.vector(int(id))

    def image_path(self, id: int) -> Path | None:
        record = self.get(id)
        if record is None:
            return None
        path = Path(record.path)
        if path.is_absolute():
            return path
        if record.path.startswith("media/"):
            return self._dir / path
        root = self.gallery_root
        return root / path if root else None

    def labels(self) -> dict[str, int]:
        return self._view.labels()

    # ----------------------------------------------------------------- writes (durable when they return)
    def add(self, vectors: np.ndarray, items: Sequence[NewItem]) -> list[int]:
        """Add items; one whose sha256 is already present (or repeated in ``items``) keeps its existing id."""
        return self.commit_add(vectors, items).ids

    def commit_add(self, vectors: np.ndarray, items: Sequence[NewItem]) -> Committed:
        x = self._check_vectors(vectors)
        if len(items) != len(x):
            raise ValueError(f"{len(x)} vectors but {len(items)} items.")
        return self._submit(AddRequest(x, list(items))) if len(items) else Committed(self.version)

    def remove(self, ids: Sequence[int]) -> list[int]:
        """Remove ``ids``; unknown ones are ignored. Returns those removed. Other ids never change."""
        return self.commit_remove(ids).ids

    def commit_remove(self, ids: Sequence[int]) -> Committed:
        return self._submit(RemoveRequest([int(i) for i in ids]))

    def relabel(self, id: int, label: str) -> Committed:
        """Give item ``id`` a new label; ``ids`` of the result is empty when there is no such item."""
        if not isinstance(label, str) or not label:
            raise ValueError("A label must be a non-empty string.")
        return self._submit(RelabelRequest(int(id), label))

    def set_search_params(self, **params: float) -> None:
        """Change nprobe / efSearch / k_factor (re-ranking depth), durably."""
        self._submit(SettingsRequest({"search_params": {**self._view.search_params, **params}}))

    def set_gallery_root(self, root: str | Path) -> None:
        self._submit(SettingsRequest({"gallery_root": str(Path(root).resolve())}))

    def _submit(self, request: Request) -> Committed:
        self.ensure_writer()
        return self._commit.submit(request)

    def _run_batch(self, requests: list[Request]) -> list[Committed | BaseException]:
        """The group commit's leader: validate, log with one write + fsync, apply, publish (or undo all)."""
        with self._mutex:
            if self._log is None:
                raise RuntimeError(f"The gallery {self._dir} is not open for writing (closed?).")
            w = self._working
            saved = w.save()
            results: list[Committed | BaseException] = []
            payloads: list[bytes] = []
            try:
                results, payloads = self._prepare_batch(requests)
                if payloads:
                    self._log.append(payloads)
            except StorageError as exc:
                w.restore(saved)  # nothing of the batch was published: no reader saw it
                return [r if isinstance(r, BaseException) else exc for r in results]
            except BaseException:
                w.restore(saved)
                raise
            if payloads:
                self._view = w.view()
            self._maybe_compact()
        return results

    def _prepare_batch(self, requests: list[Request]) -> tuple[list[Committed | BaseException], list[bytes]]:
        """Validate and apply each request in turn (each sees the ones before it), encoding its record."""
        w = self._working
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

    # ----------------------------------------------------------------- compaction
    def compact(self) -> int:
        """Fold every change so far into a new base now (after one under way); returns the base version."""
        self.ensure_writer()
        with self._compacting:
            self._compact()
        return self._view.base.version

    def _maybe_compact(self) -> None:
        deltas = self._working.deltas  # sealed ones too: a failed compaction's changes still count
        oldest = min((d.first_change for d in deltas if d.first_change is not None), default=None)
        if (
            self._policy.background
            and not self._compacting.locked()
            and time.monotonic() >= self._retry_at
            and due(sum(d.changes for d in deltas), oldest, self._policy)
        ):
            self._start(self._background_compaction)

    def _background_compaction(self) -> None:
        if not self._compacting.acquire(blocking=False):
            return
        try:
            self._compact()
            self.last_compaction_error = None
        except Exception as exc:  # the gallery keeps serving from base + log; try again later
            retry = self._policy.retry_after_s
            if isinstance(exc, StorageError | ValueError):  # a full disk, too few vectors to train: expected
                log.warning("compaction of %s failed (%s); retrying in %.0f s", self._dir, exc, retry)
            else:
                log.exception("compaction of %s failed; retrying in %.0f s", self._dir, retry)
            self.last_compaction_error = f"{type(exc).__name__}: {exc}"
            self._retry_at = time.monotonic() + retry
            return
        finally:
            self._compacting.release()
        self._sweep_media(time.time() - self._policy.media_grace_s)

    def _compact(self) -> None:
        """Seal, build the next base aside, swap it in, delete the log it covers. Caller holds _compacting."""
        with self._mutex:
            if self._log is None:
                raise RuntimeError(f"The gallery {self._dir} is not open for writing (closed?).")
            w = self._working
            if w.version != w.fresh_since:  # changes since the last seal: seal them (a failed compaction's stay)
                if self._log.first_seq <= w.version:  # new writes go to a new segment, which the base won't cover
                    fresh_log = wal.LogWriter.create(self._dir, w.version + 1)
                    self._log.close()
                    self._log = fresh_log
                w.seal()
                self._view = w.view()
            if w.version == w.base.version:
                return  # nothing to fold in
            sealed = w.view()  # the fresh delta is empty: this is the version now, without it
            sealed.deltas = sealed.deltas[:-1]
        base = build_base(self._dir, sealed)
        with self._mutex:
            w.base = base
            w.deltas = w.deltas[len(sealed.deltas) :]
            self._view = w.view()
            keep_from = self._log.first_seq if self._log is not None else base.version + 1
        for first, path in wal.segments(self._dir):
            if first < keep_from:  # every record in it is in the base now
                path.unlink(missing_ok=True)

    # ----------------------------------------------------------------- helpers
    def _start(self, target: Any, *args: Any) -> None:
        self._threads = [t for t in self._threads if t.is_alive()]
        thread = threading.Thread(target=target, args=args, name=f"gallery-{target.__name__}", daemon=True)
        self._threads.append(thread)
        thread.start()

    def _sweep_media(self, older_than: float) -> None:
        try:
            sweep_media(self._dir / "media", lambda: self._view, older_than)
        except Exception:  # a sweep is housekeeping: it must never take the gallery down
            log.exception("media sweep of %s failed", self._dir)

    def _check_vectors(self, vectors: np.ndarray) -> np.ndarray:
        x = np.asarray(vectors, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"Expected vectors of shape (n, {self.dim}), got {x.shape}.")
        if not np.isfinite(x).all():
            raise ValueError("Vectors contain NaN or infinity.")
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        if (norms == 0).any():
            raise ValueError("Vectors must not be zero.")
        return np.ascontiguousarray(x / norms)  # callers pass unit vectors; this guards the cosine maths


def _load(
    index_dir: Path, model_hash: str | None, dim: int | None, durable_only: bool = True
) -> tuple[Working, LogPosition | None]:
    """The base ``CURRENT`` names, brought up to date by the log (retried if a compaction swaps it meanwhile)."""
    for attempt in range(3):
        version = read_current(index_dir)
        assert version is not None
        try:
            working = Working.at(load_base(index_dir, version, model_hash=model_hash, dim=dim))
            return working, replay(index_dir, working, None, durable_only=durable_only)
        except (IndexCorruptError, FileNotFoundError):
            if attempt == 2 or read_current(index_dir) == version:
                raise
    raise AssertionError("unreachable")
