"""A process that only reads follows the writer with ``refresh()``: new log records, then a new base; it
never shows what the writer has not made durable."""

from __future__ import annotations

import os
from pathlib import Path

from index import GalleryIndex
from index.changes import RemoveChange, encode
from index.wal import frame, segments
from tests.index.conftest import MANUAL, clustered, new_items


def test_reader_follows_the_writer(tmp_path: Path) -> None:
    writer = GalleryIndex.create(tmp_path / "idx", model_hash="h" * 64, backbone="b", dim=16, policy=MANUAL)
    writer.add(clustered(20, 16), new_items(20))
    reader = GalleryIndex.open(writer.index_dir)
    assert reader.count == 20 and not reader.refresh()  # nothing new
    writer.add(clustered(5, 16, seed=1), new_items(5, start=20))
    writer.remove([0])
    writer.relabel(1, "moved")
    assert reader.count == 20  # a reader moves only when it refreshes
    assert reader.refresh() and reader.version == writer.version and reader.count == 24
    assert reader.get(1).label == "moved" and reader.get(0) is None
    # A whole record past the writer's durable mark (written, its fsync not yet returned, so it may still
    # be cut off again) is not read.
    [(_, path)] = segments(writer.index_dir)
    size = path.stat().st_size
    with open(path, "ab") as f:
        f.write(frame(encode(writer.version + 1, RemoveChange([5]))))
    assert not reader.refresh() and reader.get(5) is not None
    os.truncate(path, size)
    # The writer compacts and deletes the log the reader was following: the reader loads the new base.
    writer.compact()
    writer.add(clustered(1, 16, seed=2), new_items(1, start=50))
    assert reader.refresh() and reader.base_version == writer.base_version and reader.count == 25
    query = clustered(1, 16, seed=3)
    assert [h.id for h in reader.search(query, 5)[0]] == [h.id for h in writer.search(query, 5)[0]]
    writer.close()
    reader.close()
