"""A new gallery written straight to its first base, from vectors that arrive in chunks (millions of them):
no log, and never more than one chunk in memory besides the index itself.

Used where a gallery is made from a large collection at once (the benchmark's 10M galleries); adding to an
existing gallery goes through :class:`~index.gallery.GalleryIndex` and its log.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from index import factory as fx
from index.compaction import write_faiss
from index.metadata import write_metadata
from index.records import ItemRecord, NewItem
from index.rerank import RERANK_FILE, Writer, fit
from index.snapshot import INDEX_FILE, META_FILE, Manifest, write_snapshot


def create_gallery(
    index_dir: str | Path,
    chunks: Iterable[tuple[np.ndarray, Sequence[NewItem]]],
    *,
    model_hash: str,
    backbone: str,
    dim: int,
    factory: str | None = None,
    train: np.ndarray | None = None,
    gallery_root: str | Path | None = None,
    checkpoint: str | Path | None = None,
    rerank: bool = False,
    precision: str = "fp32",
) -> int:
    """Write base version 1 holding every chunk's items (ids 0, 1, ... in order); returns the count.
    ``GalleryIndex.create`` writes its empty first base with it (no chunks).

    ``train``: the sample an approximate index is trained on (without it, the type stays untrained: its first
    compaction trains it) and the range of ``rerank``'s codes (an 8-bit copy of the vectors on disk that
    searches re-rank with, index/rerank.py; without a sample, the first compaction writes it).
    Contents must be distinct (sha256): a repeated one fails the metadata's unique index."""
    index_dir = Path(index_dir)
    if (index_dir / "CURRENT").exists():
        raise ValueError(f"{index_dir} already holds an index. Choose another folder.")
    index, used = fx.make_index(factory or fx.DEFAULT_FACTORY, dim)
    if not index.is_trained and train is not None:
        if len(train) < fx.min_train_size(index):
            raise ValueError(f"Index type {used} needs a training sample of at least {fx.min_train_size(index)}.")
        index.train(np.ascontiguousarray(train, dtype=np.float32))
    count = 0
    now = time.time()
    codes: Writer | None = None

    def records() -> Iterator[ItemRecord]:
        nonlocal count
        for vectors, items in chunks:
            x = np.ascontiguousarray(vectors, dtype=np.float32)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            index.add_with_ids(x, np.arange(count, count + len(x), dtype=np.int64))
            if codes is not None:
                codes.add(count, x)
            for item in items:
                yield ItemRecord(count, item.path, item.label, item.sha256, item.width, item.height, now)
                count += 1

    def write_files(folder: Path) -> None:
        nonlocal codes
        if rerank and train is not None:
            codes = Writer(folder / RERANK_FILE, *fit(train))
        write_metadata(records(), folder / META_FILE)
        if codes is not None:
            codes.close(count)
        write_faiss(index, folder / INDEX_FILE)
        manifest.count, manifest.next_id = count, count

    index_dir.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(
        version=1,
        model_hash=model_hash,
        backbone=backbone,
        dim=dim,
        count=0,
        factory=used,
        created=now,
        gallery_root=str(Path(gallery_root).resolve()) if gallery_root else None,
        checkpoint=str(checkpoint) if checkpoint else None,
        search_params=fx.current_search_params(index),
        rerank=rerank,
        precision=precision,
    )
    write_snapshot(index_dir, manifest, write_files)
    return count
