"""Searches running while another thread adds, removes and saves always see one whole version."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from index import GalleryIndex
from tests.index.conftest import clustered, new_items

BATCH = 25


def test_searches_during_writes_see_whole_versions(tmp_path: Path) -> None:
    gi = GalleryIndex.create(tmp_path / "idx", model_hash="h" * 64, backbone="b", dim=16)
    x = clustered(40 * BATCH, 16)
    query = clustered(1, 16, seed=5)
    stop = threading.Event()
    errors: list[str] = []
    seen_sizes: set[int] = set()

    def writer() -> None:
        try:
            for b in range(40):  # add whole batches, drop the oldest batch every third step, save sometimes
                gi.add(x[b * BATCH : (b + 1) * BATCH], new_items(BATCH, start=b * BATCH, label=f"batch{b}"))
                if b % 3 == 2:
                    gi.remove(range((b - 2) * BATCH, (b - 1) * BATCH))
                if b % 10 == 9:
                    gi.save()
        finally:
            stop.set()

    def reader() -> None:
        while not stop.is_set():
            hits = gi.search(query, 10_000)[0]  # k above the count: every live item comes back
            ids = sorted(h.id for h in hits)
            seen_sizes.add(len(ids))
            batches = {i // BATCH for i in ids}
            # A whole version: only complete batches, each hit's metadata belonging to its own id.
            if len(ids) % BATCH or len(ids) != len(batches) * BATCH:
                errors.append(f"torn version: {len(ids)} hits over batches {sorted(batches)}")
            if any(h.label != f"batch{h.id // BATCH}" for h in hits):
                errors.append("hit with another item's metadata")

    threads = [threading.Thread(target=writer)] + [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors[:3]
    assert len(seen_sizes) > 3  # the readers really overlapped several versions
    assert gi.count == gi.ntotal == (40 - 13) * BATCH
    reopened = GalleryIndex.open(gi.index_dir)
    assert reopened.count == reopened.ntotal == (40 - 13) * BATCH  # the last save came after the last change
    assert np.isfinite(reopened.search(query, 3)[0][0].distance)
