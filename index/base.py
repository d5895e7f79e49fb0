"""The base: the last snapshot, loaded (its FAISS index memory-mapped, its metadata read on demand).

A base never changes after it is loaded; what is derived from it (label counts, each label's ids and their
FAISS id selector) is computed on first use and cached for the base's lifetime. The index file is mapped
(``IO_FLAG_MMAP_IFC``: the stored vectors or codes stay in the page cache, file-backed, instead of being
copied into the heap): opening costs the checksum pass, not a second copy, and nothing ever writes to it
(compaction reads its own private copy: index/compaction.py).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from index import factory as fx
from index.errors import IndexCorruptError, IndexMismatchError
from index.metadata import MetadataReader
from index.rerank import RERANK_FILE, Rerank
from index.snapshot import (
    INDEX_FILE,
    META_FILE,
    Manifest,
    read_manifest,
    snapshot_name,
    snapshots_dir,
    verify_checksums,
)

log = logging.getLogger(__name__)
LABEL_CACHE = 64  # labels whose base ids (and selector) are kept


class Base:
    def __init__(
        self, folder: Path, manifest: Manifest, index: faiss.Index, label_counts: dict[str, int] | None = None
    ) -> None:
        self.folder, self.manifest, self.index = folder, manifest, index
        self.meta = MetadataReader(folder / META_FILE)
        self.rerank = Rerank(folder / RERANK_FILE) if (folder / RERANK_FILE).is_file() else None
        self.version, self.next_id, self.count = manifest.version, manifest.next_id, manifest.count
        self.exact_selector = fx.selector_is_exact(index)
        self._label_counts = label_counts
        self._labels: OrderedDict[str, tuple[np.ndarray, Any]] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def trained(self) -> bool:
        return bool(self.index.is_trained)

    def label_counts(self) -> dict[str, int]:
        if self._label_counts is None:
            self._label_counts = self.meta.label_counts()
        return self._label_counts

    def label_ids(self, label: str) -> tuple[np.ndarray, Any]:
        """The base's ids of ``label`` (sorted) and an ``IDSelectorBatch`` of them (None when there are none)."""
        with self._lock:
            if label in self._labels:
                self._labels.move_to_end(label)
                return self._labels[label]
        ids = self.meta.ids_with_label(label)
        entry = (ids, faiss.IDSelectorBatch(ids) if len(ids) else None)
        with self._lock:
            self._labels[label] = entry
            while len(self._labels) > LABEL_CACHE:
                self._labels.popitem(last=False)
        return entry

    def close(self) -> None:
        self.meta.close()


def read_mapped(path: Path) -> faiss.Index:
    """The index in ``path``, its vectors / codes memory-mapped read-only (never modify it: copy it first)."""
    return faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC)


def same_numerics(a: str, b: str) -> bool:
    """Whether vectors embedded in precisions ``a`` and ``b`` may share a gallery: int8 ones only with int8 (they
    sit at cosine about 0.995 to the float ones); fp32, fp16 and bf16 (CUDA autocast) agree to > 0.999."""
    return (a == "int8") == (b == "int8")


def load_base(
    index_dir: Path, version: int, *, model_hash: str | None, dim: int | None, precision: str | None = None
) -> Base:
    """Snapshot ``version``, verifying the model, the dimension, the embeddings' precision (when given) and
    every file's checksum."""
    snap = snapshots_dir(index_dir) / snapshot_name(version)
    manifest = read_manifest(snap)
    rebuild = f"Rebuild it with `imgsim index build --checkpoint <your checkpoint> --out {index_dir}`."
    if model_hash is not None and manifest.model_hash != model_hash:
        raise IndexMismatchError(
            f"Index {index_dir} was built by model {manifest.model_hash[:12]}, not by this checkpoint "
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
        index = read_mapped(snap / INDEX_FILE)
    except RuntimeError as exc:
        raise IndexCorruptError(f"{snap / INDEX_FILE} cannot be read by FAISS. {rebuild}") from exc
    if index.ntotal != manifest.count or index.d != manifest.dim:
        raise IndexCorruptError(
            f"{snap} is inconsistent: {index.ntotal} vectors of dim {index.d}, manifest {manifest.count} items "
            f"of dim {manifest.dim}. {rebuild}"
        )
    fx.apply_search_params(index, manifest.search_params)
    base = Base(snap, manifest, index)
    base.meta.check()
    return base
