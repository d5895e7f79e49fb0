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

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from index import compactor, wal
from index import factory as fx
from index.base import same_numerics
from index.bulk import create_gallery
from index.compaction import CompactionPolicy
from index.errors import IndexCorruptError
from index.lock import WriterLock
from index.records import Hit, ItemRecord, NewItem
from index.search import run_search
from index.snapshot import read_current, read_manifest, snapshot_name, snapshots_dir
from index.store import Store, load
from index.vectors import check_vectors
from index.view import View
from index.working import AddRequest, Committed, RelabelRequest, RemoveRequest, SettingsRequest

log = logging.getLogger(__name__)
__all__ = ["Committed", "CompactionPolicy", "GalleryIndex", "recorded_precision", "same_numerics"]


def recorded_precision(index_dir: str | Path) -> str | None:
    """The precision the gallery at ``index_dir`` was embedded in, read from its current base's manifest; None
    when there is no gallery there yet (or it cannot be read: opening it will say why)."""
    index_dir = Path(index_dir)
    try:
        version = read_current(index_dir)
        if version is None:
            return None
        return read_manifest(snapshots_dir(index_dir) / snapshot_name(version)).precision
    except (OSError, ValueError, IndexCorruptError):
        return None


class GalleryIndex:
    def __init__(self, store: Store) -> None:
        self._store = store

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
        precision: str = "fp32",
    ) -> GalleryIndex:
        """An empty gallery in ``index_dir`` (which must not hold one yet), as base version 1; it writes.
        ``precision``: what the embedder computes in (``Embedder.precision``), recorded so that other numerics
        are refused.

        ``rerank``: keep an 8-bit copy of the base's vectors on disk and re-rank the index's candidates
        with it (for compressed PQ types: index/rerank.py); made by the first compaction."""
        index_dir = Path(index_dir)
        if (index_dir / "CURRENT").exists():
            raise ValueError(f"{index_dir} already holds an index. Open it, or remove it / choose another folder.")
        index_dir.mkdir(parents=True, exist_ok=True)
        lock = WriterLock.acquire(index_dir)
        try:
            create_gallery(
                index_dir,
                [],
                model_hash=model_hash,
                backbone=backbone,
                dim=dim,
                factory=factory,
                gallery_root=gallery_root,
                checkpoint=checkpoint,
                rerank=rerank,
                precision=precision,
            )
            working, pos = load(index_dir, model_hash, dim)
            store = Store(index_dir, working, policy or CompactionPolicy(), pos)
            store.become_writer(lock)
        except BaseException:
            lock.release()
            raise
        return cls(store)

    @classmethod
    def open(
        cls,
        index_dir: str | Path,
        *,
        model_hash: str | None = None,
        dim: int | None = None,
        precision: str | None = None,
        writer: bool = False,
        policy: CompactionPolicy | None = None,
    ) -> GalleryIndex:
        """Load ``CURRENT``'s base (verifying the model, the dimension, the embeddings' precision (see
        :func:`~index.base.same_numerics`) and every checksum) and replay the log.

        ``writer=True`` takes the writer lock now (else at the first change)."""
        index_dir = Path(index_dir)
        if not (index_dir / "CURRENT").is_file():
            raise FileNotFoundError(f"No index at {index_dir}. Build one with `imgsim index build`.")
        working, pos = load(index_dir, model_hash, dim, precision=precision)
        gi = cls(Store(index_dir, working, policy or CompactionPolicy(), pos))
        log.info(
            "opened %s version %d: %d items (%s; base %d + %d changes in the log)",
            index_dir,
            gi.version,
            gi.count,
            working.base.manifest.factory,
            working.base.version,
            gi.pending,
        )
        if writer:
            gi.ensure_writer()
        return gi

    def close(self, compact: bool = False) -> None:
        """Stop writing: optionally fold the log into a new base first (the service's clean shutdown),
        wait for a compaction under way, release the writer lock. Reads keep working on what was loaded."""
        self._store.close(compact)

    def __enter__(self) -> GalleryIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ensure_writer(self) -> None:
        """Take the writer lock (if this object does not hold it yet) and catch up with the disk.

        Raises :class:`~index.errors.IndexConflictError` naming the process that writes instead."""
        self._store.ensure_writer()

    def refresh(self) -> bool:
        """Catch up with the writer (another process): its newer log records or its new base. A reader calls
        this to follow; the writer is always current. Returns whether the version moved."""
        return self._store.refresh()

    # ----------------------------------------------------------------- properties
    @property
    def version(self) -> int:
        return self._store.view.version

    @property
    def count(self) -> int:
        return self._store.view.count

    @property
    def ntotal(self) -> int:
        """Vectors searched: the base's not removed plus the deltas' live ones (= ``count``)."""
        return self._store.view.count

    @property
    def base_version(self) -> int:
        return self._store.view.base.version

    @property
    def pending(self) -> int:
        """Changes in the log and the delta, not yet compacted into the base."""
        return self._store.view.changes

    @property
    def dim(self) -> int:
        return self._store.view.base.manifest.dim

    @property
    def model_hash(self) -> str:
        return self._store.view.base.manifest.model_hash

    @property
    def backbone(self) -> str:
        return self._store.view.base.manifest.backbone

    @property
    def factory(self) -> str:
        return self._store.view.base.manifest.factory

    @property
    def precision(self) -> str:
        return self._store.view.base.manifest.precision

    @property
    def index_dir(self) -> Path:
        return self._store.dir

    @property
    def checkpoint(self) -> str | None:
        value: str | None = self._store.view.settings.get("checkpoint")
        return value

    @property
    def gallery_root(self) -> Path | None:
        root = self._store.view.settings.get("gallery_root")
        return Path(root) if root else None

    @property
    def media_dir(self) -> Path:
        path = self._store.dir / "media"
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def searched_in_memory(self) -> bool:
        return True

    @property
    def fsyncs(self) -> int:
        """Batches this object has committed (one log write and one fsync each)."""
        return self._store.commit.batches

    def info(self) -> dict[str, Any]:
        view = self._store.view
        m = view.base.manifest
        return {
            "index_dir": str(self._store.dir),
            "version": view.version,
            "count": view.count,
            "dim": m.dim,
            "factory": m.factory,
            "model_hash": m.model_hash,
            "backbone": m.backbone,
            "precision": m.precision,
            "created": m.created,
            "gallery_root": str(self.gallery_root) if self.gallery_root else None,
            "checkpoint": self.checkpoint,
            "search_params": view.search_params or fx.current_search_params(view.base.index),
            "labels": view.labels(),
            "base_version": view.base.version,
            "pending_changes": view.changes,
            "log_bytes": sum(p.stat().st_size for _, p in wal.segments(self._store.dir)),
            "writer": self._store.log is not None,
            "last_compaction_error": self._store.last_compaction_error,
        }

    # ----------------------------------------------------------------- reads (one view each)
    def view(self) -> View:
        """The published version: read several things from it to see them all at one version."""
        return self._store.view

    def search(self, vectors: np.ndarray, k: int, label: str | None = None) -> list[list[Hit]]:
        return run_search(self._store.view, self._check_vectors(vectors), k, label)

    def get(self, id: int) -> ItemRecord | None:
        return self._store.view.get(int(id))

    def items(self, offset: int = 0, limit: int = 50, label: str | None = None) -> tuple[list[ItemRecord], int]:
        if offset < 0 or limit < 0:
            raise ValueError("offset and limit must be >= 0.")
        return self._store.view.items(offset, limit, label)

    def all_records(self) -> Iterator[ItemRecord]:
        """Every item in id order, read a chunk at a time."""
        return self._store.view.iter_records()

    def id_for_sha(self, sha256: str) -> int | None:
        """The id of the item with this content, if it is indexed."""
        return self._store.view.id_for_sha(sha256)

    def vector(self, id: int) -> np.ndarray | None:
        return self._store.view.vector(int(id))

    def vectors(self, ids: Sequence[int]) -> np.ndarray:
        """The stored vectors of ``ids`` (all present), one version's, as an (n, dim) array."""
        view = self._store.view
        found = [view.vector(int(i)) for i in ids]
        present = [v for v in found if v is not None]
        if len(present) != len(found):
            raise KeyError("Some of these ids are not in the gallery.")
        return np.stack(present) if present else np.zeros((0, self.dim), np.float32)

    def image_path(self, id: int) -> Path | None:
        record = self.get(id)
        if record is None:
            return None
        path = Path(record.path)
        if path.is_absolute():
            return path
        if record.path.startswith("media/"):
            return self._store.dir / path
        root = self.gallery_root
        return root / path if root else None

    def labels(self) -> dict[str, int]:
        return self._store.view.labels()

    # ----------------------------------------------------------------- writes (durable when they return)
    def add(self, vectors: np.ndarray, items: Sequence[NewItem]) -> list[int]:
        """Add items; one whose sha256 is already present (or repeated in ``items``) keeps its existing id."""
        return self.commit_add(vectors, items).ids

    def commit_add(self, vectors: np.ndarray, items: Sequence[NewItem]) -> Committed:
        x = self._check_vectors(vectors)
        if len(items) != len(x):
            raise ValueError(f"{len(x)} vectors but {len(items)} items.")
        return self._store.submit(AddRequest(x, list(items))) if len(items) else Committed(self.version)

    def remove(self, ids: Sequence[int]) -> list[int]:
        """Remove ``ids``; unknown ones are ignored. Returns those removed. Other ids never change."""
        return self.commit_remove(ids).ids

    def commit_remove(self, ids: Sequence[int]) -> Committed:
        return self._store.submit(RemoveRequest([int(i) for i in ids]))

    def relabel(self, id: int, label: str) -> Committed:
        """Give item ``id`` a new label; ``ids`` of the result is empty when there is no such item."""
        if not isinstance(label, str) or not label:
            raise ValueError("A label must be a non-empty string.")
        return self._store.submit(RelabelRequest(int(id), label))

    def set_search_params(self, **params: float) -> None:
        """Change nprobe / efSearch / k_factor (re-ranking depth) / rerank (candidates per result), durably."""
        self._store.submit(SettingsRequest({"search_params": {**self._store.view.search_params, **params}}))

    def set_gallery_root(self, root: str | Path) -> None:
        self._store.submit(SettingsRequest({"gallery_root": str(Path(root).resolve())}))

    def compact(self) -> int:
        """Fold every change so far into a new base now (after one under way); returns the base version."""
        compactor.compact(self._store)
        return self._store.view.base.version

    def _check_vectors(self, vectors: np.ndarray) -> np.ndarray:
        return check_vectors(vectors, self.dim)
