"""GalleryIndex behaviour on the exact index, checked against numpy brute force."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from index import GalleryIndex, NewItem
from tests.index.conftest import brute_force, clustered, new_items


def test_search_matches_brute_force_with_distances(make_index) -> None:  # type: ignore[no-untyped-def]
    gi, x = make_index(300)
    queries = clustered(20, 16, seed=1)
    hits = gi.search(queries, 10)
    expected = brute_force(x, np.arange(300), queries, 10)
    assert [[h.id for h in row] for row in hits] == expected.tolist()
    cos = float(queries[0] @ x[hits[0][0].id])
    assert hits[0][0].similarity == pytest.approx(cos, abs=1e-5)
    assert hits[0][0].distance == pytest.approx(np.linalg.norm(queries[0] - x[hits[0][0].id]), abs=1e-4)
    assert hits[0][0].label == f"cls{hits[0][0].id % 3}" and hits[0][0].path.endswith(f"img{hits[0][0].id}.png")


def test_k_larger_than_count_drops_padding(make_index) -> None:  # type: ignore[no-untyped-def]
    gi, x = make_index(7)
    hits = gi.search(x[:2], 50)
    assert [len(row) for row in hits] == [7, 7]
    assert all(h.id >= 0 for row in hits for h in row)
    assert sorted(h.id for h in hits[0]) == list(range(7))


def test_label_filter_matches_brute_force_and_pads(make_index) -> None:  # type: ignore[no-untyped-def]
    gi, x = make_index(90)
    queries = clustered(5, 16, seed=2)
    mine = np.arange(90)[np.arange(90) % 3 == 1]
    hits = gi.search(queries, 10, label="cls1")
    assert [[h.id for h in row] for row in hits] == brute_force(x[mine], mine, queries, 10).tolist()
    assert all(h.label == "cls1" for row in hits for h in row)
    assert len(gi.search(queries[:1], 500, label="cls1")[0]) == 30  # FAISS pads with -1 past 30: dropped
    assert gi.search(queries[:1], 5, label="no-such-label") == [[]]


def test_empty_index_and_bad_queries(make_index) -> None:  # type: ignore[no-untyped-def]
    gi, _ = make_index(0)
    assert gi.search(clustered(2, 16), 5) == [[], []]
    with pytest.raises(ValueError, match="shape"):
        gi.search(np.zeros((2, 15), np.float32), 5)
    with pytest.raises(ValueError, match="NaN"):
        gi.search(np.full((1, 16), np.nan, np.float32), 5)
    with pytest.raises(ValueError, match="k must"):
        gi.search(clustered(1, 16), 0)


def test_add_remove_round_trip_keeps_ids_and_metadata(make_index, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    gi, x = make_index(60)
    assert gi.remove([5, 7, 5, 12345]) == [5, 7]
    assert gi.get(5) is None and gi.vector(7) is None
    assert gi.get(6) is not None and np.allclose(gi.vector(6), x[6], atol=1e-6)  # ids never shift
    extra = clustered(3, 16, seed=9)
    new_ids = gi.add(extra, new_items(3, start=100))
    assert new_ids == [60, 61, 62]  # ids are never reused
    assert gi.ntotal == gi.count == 61
    version = gi.save()
    reopened = GalleryIndex.open(gi.index_dir, model_hash=gi.model_hash, dim=16)
    assert reopened.version == version and reopened.count == reopened.ntotal == 61
    rows, total = reopened.items(0, 1000)
    assert total == 61 and [r.id for r in rows] == sorted(set(range(63)) - {5, 7})
    assert np.allclose(reopened.vector(61), extra[1], atol=1e-6)
    assert reopened.search(extra[2:3], 1)[0][0].id == 62
    assert reopened.add(clustered(1, 16, seed=3), new_items(1, start=200)) == [63]  # next id survives reopen


def test_same_content_is_not_added_twice(make_index) -> None:  # type: ignore[no-untyped-def]
    gi, _ = make_index(10)
    dup = new_items(2, start=3)  # contents of ids 3 and 4
    fresh = NewItem("new.png", "cls0", "f" * 64, 1, 1)
    ids = gi.add(clustered(4, 16, seed=5), [dup[0], fresh, dup[1], fresh])
    assert ids == [3, 10, 4, 10]
    assert gi.count == gi.ntotal == 11


def test_items_labels_paths(make_index, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    gi, _ = make_index(10)
    page, total = gi.items(offset=2, limit=3, label="cls0")
    assert total == 4 and [r.id for r in page] == [6, 9]
    assert gi.labels() == {"cls0": 4, "cls1": 3, "cls2": 3}
    assert gi.image_path(4) == tmp_path / "gallery" / "cls1/img4.png"
    [uid] = gi.add(clustered(1, 16, seed=7), [NewItem("media/ab.png", "up", "a" * 64, 2, 2)])
    assert gi.image_path(uid) == gi.index_dir / "media/ab.png" and gi.media_dir.is_dir()
    assert gi.image_path(999) is None
    assert gi.get(uid) is not None and gi.get(uid).added_at == pytest.approx(time.time(), abs=60)


def test_versions_increase_and_old_snapshots_pruned(make_index) -> None:  # type: ignore[no-untyped-def]
    gi, _ = make_index(5)
    versions = [gi.save() for _ in range(5)]
    assert versions == list(range(2, 7))
    names = sorted(p.name for p in (gi.index_dir / "snapshots").iterdir())
    assert names == ["snap-00000004", "snap-00000005", "snap-00000006"]
    assert (gi.index_dir / "CURRENT").read_text().strip() == "snap-00000006"


def test_create_refuses_existing_index(make_index) -> None:  # type: ignore[no-untyped-def]
    gi, _ = make_index(1)
    with pytest.raises(ValueError, match="already holds an index"):
        GalleryIndex.create(gi.index_dir, model_hash="x", backbone="b", dim=16)
    with pytest.raises(FileNotFoundError, match="index build"):
        GalleryIndex.open(gi.index_dir / "nothing")
