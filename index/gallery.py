"""``GalleryIndex``: a FAISS index plus its item table, searched concurrently, changed by copy-and-swap.

Readers take ``self._state`` once and use only that object, so a search always sees one whole version.
Writers (add, remove, save) hold ``self._lock``, build a changed copy and publish it with one assignment.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import faiss
import numpy as np

from index import factory as fx
from index.errors import IndexConflictError, IndexCorruptError, IndexMismatchError
from index.metadata import read_metadata, write_metadata
from index.records import Hit, ItemRecord, NewItem
from index.search import run_search
from index.snapshot import (
    INDEX_FILE,
    META_FILE,
    Manifest,
    clean_stale,
    locked,
    read_current,
    read_manifest,
    snapshot_name,
    snapshots_dir,
    verify_checksums,
    write_snapshot,
)

log = logging.getLogger(__name__)


@dataclass
class State:
    """One immutable version: never changed after it is published (``cache`` only memoises)."""

    index: faiss.Index
    records: dict[int, ItemRecord]  # in increasing id order
    by_sha: dict[str, int]
    next_id: int
    cache: dict[Any, Any] = field(default_factory=dict)

    def label_ids(self, label: str) -> np.ndarray:
        key = ("label", label)
        if key not in self.cache:
            self.cache[key] = np.array([i for i, r in self.records.items() if r.label == label], dtype=np.int64)
        ids: np.ndarray = self.cache[key]
        return ids


def same_numerics(a: str, b: str) -> bool:
    """Whether vectors embedded in precisions ``a`` and ``b`` may share a gallery: int8 ones only with int8 (they
    sit at cosine about 0.995 to the float ones); fp32, fp16 and bf16 (CUDA autocast) agree to > 0.999."""
    return (a == "int8") == (b == "int8")


def recorded_precision(index_dir: str | Path) -> str | None:
    """The precision the gallery at ``index_dir`` was embedded in, read from its manifest; None when there is no
    gallery there yet (or it cannot be read: opening it will say why)."""
    index_dir = Path(index_dir)
    try:
        version = read_current(index_dir)
        if version is None:
            return None
        return read_manifest(snapshots_dir(index_dir) / snapshot_name(version)).precision
    except (OSError, ValueError, IndexCorruptError):
        return None


class GalleryIndex:
    def __init__(self, index_dir: Path, manifest: Manifest, state: State) -> None:
        self._dir = index_dir
        self._manifest = manifest
        self._version = manifest.version
        self._state = state
        self._lock = threading.RLock()
        self._dirty = False
        self.checkpoint: str | None = manifest.checkpoint
        self.gallery_root: Path | None = Path(manifest.gallery_root) if manifest.gallery_root else None

    # ----------------------------------------------------------------- create / open
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
        precision: str = "fp32",
    ) -> GalleryIndex:
        """An empty index in ``index_dir`` (which must not hold one yet), saved as snapshot 1. ``precision``:
        what the embedder computes in (``Embedder.precision``), recorded so that other numerics are refused."""
        index_dir = Path(index_dir)
        if (index_dir / "CURRENT").exists():
            raise ValueError(f"{index_dir} already holds an index. Open it, or remove it / choose another folder.")
        index, used = fx.make_index(factory or fx.DEFAULT_FACTORY, dim)
        manifest = Manifest(
            version=0,
            model_hash=model_hash,
            backbone=backbone,
            dim=dim,
            count=0,
            factory=used,
            created=time.time(),
            gallery_root=str(Path(gallery_root).resolve()) if gallery_root else None,
            checkpoint=str(checkpoint) if checkpoint else None,
            precision=precision,
        )
        gi = cls(index_dir, manifest, State(index, {}, {}, 0))
        gi.save()
        return gi

    @classmethod
    def open(
        cls,
        index_dir: str | Path,
        *,
        model_hash: str | None = None,
        dim: int | None = None,
        precision: str | None = None,
    ) -> GalleryIndex:
        """Load the ``CURRENT`` snapshot, verifying the model, the dimension, the embeddings' precision (see
        :func:`same_numerics`) and every file's checksum."""
        index_dir = Path(index_dir)
        if not (index_dir / "CURRENT").is_file():
            raise FileNotFoundError(f"No index at {index_dir}. Build one with `imgsim index build`.")
        with locked(index_dir):
            clean_stale(index_dir)
            version = read_current(index_dir)
            assert version is not None
            snap = snapshots_dir(index_dir) / snapshot_name(version)
            manifest = read_manifest(snap)
            rebuild = f"Rebuild it with `imgsim index build --checkpoint <your checkpoint> --out {index_dir}`."
            if model_hash is not None and manifest.model_hash != model_hash:
                raise IndexMismatchError(
                    f"Index {index_dir} was built by model {manifest.model_hash[:12]}, not by this "
                    f"checkpoint "
                    f"({model_hash[:12]}). {rebuild}"
                )
            if dim is not None and manifest.dim != dim:
                raise IndexMismatchError(
                    f"Index {index_dir} holds {manifest.dim}-d vectors; this model makes {dim}-d. {rebuild}"
                )
            if precision is not None and not same_numerics(manifest.precision, precision):
                raise IndexMismatchError(
                    f"Index {index_dir} holds {manifest.precision} embeddings; this embedder computes in {precision}, "
                    f"whose vectors differ slightly. Embed with precision {manifest.precision} (--precision, "
                    f"IMGSIM_PRECISION; auto follows the gallery), or {rebuild[0].lower()}{rebuild[1:]}"
                )
            verify_checksums(snap, manifest)
            try:
                index = faiss.read_index(str(snap / INDEX_FILE))
            except RuntimeError as exc:
                raise IndexCorruptError(f"{snap / INDEX_FILE} cannot be read by FAISS. {rebuild}") from exc
            records = read_metadata(snap / META_FILE)
        if index.ntotal != len(records) or index.d != manifest.dim:
            raise IndexCorruptError(
                f"{snap} is inconsistent: {index.ntotal} vectors of dim {index.d}, "
                f"{len(records)} metadata rows, "
                f"manifest dim {manifest.dim}. {rebuild}"
            )
        fx.apply_search_params(index, manifest.search_params)
        by_sha = {r.sha256: i for i, r in records.items()}
        log.info("opened %s version %d: %d items (%s)", index_dir, version, len(records), manifest.factory)
        return cls(index_dir, manifest, State(index, records, by_sha, manifest.next_id))

    # ----------------------------------------------------------------- properties
    @property
    def version(self) -> int:
        return self._version

    @property
    def count(self) -> int:
        return len(self._state.records)

    @property
    def dim(self) -> int:
        return self._manifest.dim

    @property
    def model_hash(self) -> str:
        return self._manifest.model_hash

    @property
    def backbone(self) -> str:
        return self._manifest.backbone

    @property
    def factory(self) -> str:
        return self._manifest.factory

    @property
    def precision(self) -> str:
        return self._manifest.precision

    @property
    def index_dir(self) -> Path:
        return self._dir

    @property
    def dirty(self) -> bool:
        """True when there are changes that :meth:`save` has not written yet."""
        return self._dirty

    @property
    def ntotal(self) -> int:
        return int(self._state.index.ntotal)

    @property
    def media_dir(self) -> Path:
        path = self._dir / "media"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def info(self) -> dict[str, Any]:
        m = self._manifest
        return {
            "index_dir": str(self._dir),
            "version": self._version,
            "count": self.count,
            "dim": m.dim,
            "factory": m.factory,
            "model_hash": m.model_hash,
            "backbone": m.backbone,
            "precision": m.precision,
            "created": m.created,
            "gallery_root": str(self.gallery_root) if self.gallery_root else None,
            "checkpoint": self.checkpoint,
            "search_params": fx.current_search_params(self._state.index),
            "labels": self.labels(),
        }

    # ----------------------------------------------------------------- reads
    def search(self, vectors: np.ndarray, k: int, label: str | None = None) -> list[list[Hit]]:
        return run_search(self._state, self._check_vectors(vectors), k, label)

    def get(self, id: int) -> ItemRecord | None:
        return self._state.records.get(int(id))

    def items(self, offset: int = 0, limit: int = 50, label: str | None = None) -> tuple[list[ItemRecord], int]:
        if offset < 0 or limit < 0:
            raise ValueError("offset and limit must be >= 0.")
        state = self._state
        key = ("items", label)
        if key not in state.cache:
            state.cache[key] = [r for r in state.records.values() if label is None or r.label == label]
        rows: list[ItemRecord] = state.cache[key]
        return rows[offset : offset + limit], len(rows)

    def all_records(self) -> list[ItemRecord]:
        return list(self._state.records.values())

    def id_for_sha(self, sha256: str) -> int | None:
        """The id of the item with this content, if it is indexed."""
        return self._state.by_sha.get(sha256)

    def vector(self, id: int) -> np.ndarray | None:
        state = self._state
        if int(id) not in state.records:
            return None
        vec = np.asarray(state.index.reconstruct(int(id)))
        return vec

    def image_path(self, id: int) -> Path | None:
        record = self.get(id)
        if record is None:
            return None
        path = Path(record.path)
        if path.is_absolute():
            return path
        if record.path.startswith("media/"):
            return self._dir / path
        return self.gallery_root / path if self.gallery_root else None

    def labels(self) -> dict[str, int]:
        state = self._state
        if "labels" not in state.cache:
            state.cache["labels"] = dict(sorted(Counter(r.label for r in state.records.values()).items()))
        labels: dict[str, int] = state.cache["labels"]
        return dict(labels)

    # ----------------------------------------------------------------- writes
    def add(self, vectors: np.ndarray, items: Sequence[NewItem]) -> list[int]:
        """Add items; one whose sha256 is already present (or repeated in ``items``) keeps its existing id."""
        x = self._check_vectors(vectors)
        if len(items) != len(x):
            raise ValueError(f"{len(x)} vectors but {len(items)} items.")
        with self._lock:
            state = self._state
            records, by_sha, next_id = dict(state.records), dict(state.by_sha), state.next_id
            ids: list[int] = []
            rows, new_ids = [], []
            now = time.time()
            for row, item in enumerate(items):
                if item.sha256 in by_sha:
                    ids.append(by_sha[item.sha256])
                    continue
                new_id, next_id = next_id, next_id + 1
                records[new_id] = ItemRecord(
                    new_id, item.path, item.label, item.sha256, int(item.width), int(item.height), now
                )
                by_sha[item.sha256] = new_id
                ids.append(new_id)
                rows.append(row)
                new_ids.append(new_id)
            if not rows:
                return ids
            index = faiss.clone_index(state.index)
            fx.apply_search_params(index, fx.current_search_params(state.index))
            if not index.is_trained:
                need = fx.min_train_size(index)
                if len(rows) < need:
                    raise ValueError(
                        f"Index type {self.factory} must be trained on at least {need} vectors; "
                        f"got {len(rows)}. "
                        "Use the exact type (--factory IDMap2,Flat) for a gallery this small."
                    )
                index.train(fx.training_sample(x[rows], need))
            index.add_with_ids(x[rows], np.asarray(new_ids, dtype=np.int64))
            self._state = State(index, records, by_sha, next_id)
            self._dirty = True
        return ids

    def remove(self, ids: Sequence[int]) -> list[int]:
        """Remove ``ids``; unknown ones are ignored. Returns those removed. Other ids never change."""
        with self._lock:
            state = self._state
            gone = [i for i in dict.fromkeys(int(i) for i in ids) if i in state.records]
            if not gone:
                return []
            drop = set(gone)
            records = {i: r for i, r in state.records.items() if i not in drop}
            index = faiss.clone_index(state.index)
            fx.apply_search_params(index, fx.current_search_params(state.index))
            try:
                cast(Any, index).remove_ids(np.asarray(gone, dtype=np.int64))
            except RuntimeError:  # HNSW and refine indexes cannot remove in place
                index = fx.rebuild_without(state.index, np.fromiter(records, dtype=np.int64))
            by_sha = {r.sha256: i for i, r in records.items()}
            self._state = State(index, records, by_sha, state.next_id)
            self._dirty = True
        return gone

    def set_search_params(self, **params: float) -> None:
        """Change nprobe / efSearch / k_factor (re-ranking depth) on a copy, then publish it."""
        with self._lock:
            state = self._state
            index = faiss.clone_index(state.index)
            fx.apply_search_params(index, {**fx.current_search_params(state.index), **params})
            self._state = State(index, state.records, state.by_sha, state.next_id)
            self._dirty = True

    def save(self) -> int:
        """Write a new snapshot atomically and make it current; returns its version."""
        with self._lock, locked(self._dir):
            on_disk = read_current(self._dir)
            if on_disk is not None and on_disk != self._version:
                raise IndexConflictError(
                    f"{self._dir} is at version {on_disk} on disk, but this copy was loaded at "
                    f"{self._version}: "
                    "another process changed it. Reopen the index and apply the change again."
                )
            state = self._state
            m = self._manifest
            manifest = Manifest(
                version=self._version + 1,
                model_hash=m.model_hash,
                backbone=m.backbone,
                dim=m.dim,
                count=len(state.records),
                factory=m.factory,
                created=m.created,
                next_id=state.next_id,
                gallery_root=str(self.gallery_root) if self.gallery_root else None,
                checkpoint=self.checkpoint,
                precision=m.precision,
                search_params=fx.current_search_params(state.index),
            )

            def write_files(folder: Path) -> None:
                faiss.write_index(state.index, str(folder / INDEX_FILE))
                write_metadata(state.records.values(), folder / META_FILE)

            write_snapshot(self._dir, manifest, write_files)
            self._manifest, self._version, self._dirty = manifest, manifest.version, False
            log.info("saved %s version %d (%d items)", self._dir, manifest.version, manifest.count)
            return manifest.version

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
