"""GalleryIndex behaviour on the exact index, checked against numpy brute force and a plain-Python model."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import pytest

from index import GalleryIndex, NewItem
from index.wal import segments
from tests.index.conftest import MANUAL, brute_force, clustered, new_items


def test_search_matches_brute_force_with_distances(make_index) -> None:  # type: ignore[no-untyped-def]
    gi, x = make_index(300)
    queries = clustered(20, 16, seed=1)
    expected = brute_force(x, np.arange(300), queries, 10)
    for stage in ("delta", "base"):  # all 300 in the log, then all in the compacted base
        hits = gi.search(queries, 10)
        assert [[h.id for h in row] for row in hits] == expected.tolist(), stage
        cos = float(queries[0] @ x[hits[0][0].id])
        assert hits[0][0].similarity == pytest.approx(cos, abs=1e-5)
        assert hits[0][0].distance == pytest.approx(np.linalg.norm(queries[0] - x[hits[0][0].id]), abs=1e-4)
        assert hits[0][0].label == f"cls{hits[0][0].id % 3}" and hits[0][0].path.endswith(f"img{hits[0][0].id}.png")
        gi.compact()


def test_k_larger_than_count_drops_padding(make_index) -> None:  # type: ignore[no-untyped-def]
    gi, x = make_index(7)
    gi.compact()
    gi.add(clustered(2, 16, seed=4), new_items(2, start=7))  # 7 in the base, 2 in the delta
    hits = gi.search(x[:2], 50)
    assert [len(row) for row in hits] == [9, 9]
    assert all(h.id >= 0 for row in hits for h in row)
    assert sorted(h.id for h in hits[0]) == list(range(9))


def test_label_filter_matches_brute_force_and_pads(make_index) -> None:  # type: ignore[no-untyped-def]
    gi, x = make_index(90)
    queries = clustered(5, 16, seed=2)
    mine = np.arange(90)[np.arange(90) % 3 == 1]
    for _ in ("delta", "base"):
        hits = gi.search(queries, 10, label="cls1")
        assert [[h.id for h in row] for row in hits] == brute_force(x[mine], mine, queries, 10).tolist()
        assert all(h.label == "cls1" for row in hits for h in row)
        assert len(gi.search(queries[:1], 500, label="cls1")[0]) == 30  # FAISS pads with -1 past 30: dropped
        assert gi.search(queries[:1], 5, label="no-such-label") == [[]]
        gi.compact()


def test_empty_index_and_bad_queries(make_index) -> None:  # type: ignore[no-untyped-def]
    gi, _ = make_index(0)
    assert gi.search(clustered(2, 16), 5) == [[], []]
    with pytest.raises(ValueError, match="shape"):
        gi.search(np.zeros((2, 15), np.float32), 5)
    with pytest.raises(ValueError, match="NaN"):
        gi.search(np.full((1, 16), np.nan, np.float32), 5)
    with pytest.raises(ValueError, match="k must"):
        gi.search(clustered(1, 16), 0)
    with pytest.raises(ValueError, match="zero"):
        gi.add(np.zeros((1, 16), np.float32), new_items(1))
    assert gi.version == 1 and gi.count == 0  # refused requests change nothing


def test_add_remove_round_trip_keeps_ids_and_metadata(make_index) -> None:  # type: ignore[no-untyped-def]
    gi, x = make_index(60)
    gi.compact()
    assert gi.remove([5, 7, 5, 12345]) == [5, 7]
    assert gi.get(5) is None and gi.vector(7) is None
    assert gi.get(6) is not None and np.allclose(gi.vector(6), x[6], atol=1e-6)  # ids never shift
    extra = clustered(3, 16, seed=9)
    new_ids = gi.add(extra, new_items(3, start=100))
    assert new_ids == [60, 61, 62]  # ids are never reused
    assert gi.ntotal == gi.count == 61
    assert np.allclose(gi.vector(61), extra[1], atol=1e-6)
    version = gi.version
    gi.close()
    for compacted in (False, True):  # from base + log, then from the compacted base alone
        reopened = GalleryIndex.open(gi.index_dir, model_hash=gi.model_hash, dim=16, policy=MANUAL)
        assert reopened.version == version and reopened.count == 61
        assert reopened.pending == (0 if compacted else 5)
        rows, total = reopened.items(0, 1000)
        assert total == 61 and [r.id for r in rows] == sorted(set(range(63)) - {5, 7})
        assert np.allclose(reopened.vector(61), extra[1], atol=1e-6)
        assert reopened.search(extra[2:3], 1)[0][0].id == 62
        reopened.compact()
        reopened.close()
    reopened = GalleryIndex.open(gi.index_dir, policy=MANUAL)
    assert reopened.add(clustered(1, 16, seed=3), new_items(1, start=200)) == [63]  # next id survives reopen
    reopened.close()


def test_same_content_is_not_added_twice(make_index) -> None:  # type: ignore[no-untyped-def]
    gi, _ = make_index(10)
    gi.compact()
    dup = new_items(2, start=3)  # contents of ids 3 and 4, in the base
    fresh = NewItem("new.png", "cls0", "f" * 64, 1, 1)
    done = gi.commit_add(clustered(4, 16, seed=5), [dup[0], fresh, dup[1], fresh])
    assert done.ids == [3, 10, 4, 10] and done.created == [10]
    assert gi.count == gi.ntotal == 11
    assert gi.add(clustered(1, 16, seed=6), [fresh]) == [10]  # known in the delta too
    gi.remove([3])
    assert gi.id_for_sha(dup[0].sha256) is None
    assert gi.add(clustered(1, 16, seed=7), [dup[0]]) == [11]  # removed content comes back under a new id


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
    with pytest.raises(ValueError, match=">= 0"):
        gi.items(-1, 5)


def test_relabel_moves_an_item_between_labels(make_index) -> None:  # type: ignore[no-untyped-def]
    gi, x = make_index(30)
    gi.compact()
    gi.add(clustered(3, 16, seed=8), new_items(3, start=30))  # ids 30..32 in the delta, 30 is cls0
    done = gi.relabel(3, "cls1")  # a base item
    assert done.ids == [3] and done.version == gi.version
    gi.relabel(30, "odd")  # a delta item
    assert gi.relabel(999, "x").ids == []  # unknown: nothing changes
    before = gi.version
    assert gi.relabel(3, "cls1").ids == [3] and gi.version == before  # the same label: no new version
    for stage in ("delta", "compacted", "reopened"):
        assert gi.get(3).label == "cls1" and gi.get(30).label == "odd", stage
        assert gi.labels() == {"cls0": 9, "cls1": 12, "cls2": 11, "odd": 1}, stage
        page, total = gi.items(0, 100, label="cls1")
        assert total == 12 and 3 in [r.id for r in page] and all(r.label == "cls1" for r in page), stage
        hits = gi.search(x[3:4], 1, label="cls1")[0]
        assert hits[0].id == 3 and hits[0].label == "cls1", stage
        assert all(h.id != 3 for h in gi.search(x[3:4], 50, label="cls0")[0]), stage
        if stage == "delta":
            gi.compact()
        elif stage == "compacted":
            gi.close()
            gi = GalleryIndex.open(gi.index_dir, policy=MANUAL)
    gi.close()


def test_versions_count_changes_and_compaction_prunes(make_index) -> None:  # type: ignore[no-untyped-def]
    gi, _ = make_index(0)
    versions = []
    for i in range(4):
        gi.add(clustered(1, 16, seed=i), new_items(1, start=i))
        versions.append(gi.version)
        gi.compact()
    assert versions == [2, 3, 4, 5]  # one version per change; compaction keeps the version
    names = sorted(p.name for p in (gi.index_dir / "snapshots").iterdir())
    assert names == ["snap-00000004", "snap-00000005"]  # the current base and the one before
    assert (gi.index_dir / "CURRENT").read_text().strip() == "snap-00000005"
    assert [first for first, _ in segments(gi.index_dir)] == [6]  # the log holds only what the base lacks
    assert gi.compact() == 5  # nothing new: nothing written
    assert sorted(p.name for p in (gi.index_dir / "snapshots").iterdir()) == names


def test_create_refuses_existing_index(make_index) -> None:  # type: ignore[no-untyped-def]
    gi, _ = make_index(1)
    with pytest.raises(ValueError, match="already holds an index"):
        GalleryIndex.create(gi.index_dir, model_hash="x", backbone="b", dim=16)
    with pytest.raises(FileNotFoundError, match="index build"):
        GalleryIndex.open(gi.index_dir / "nothing")


# -- a long random sequence of changes, checked against a plain-Python model -----------------------------
class Model:
    """The gallery as dicts: what every read must agree with."""

    def __init__(self) -> None:
        self.vectors: dict[int, np.ndarray] = {}
        self.labels: dict[int, str] = {}
        self.shas: dict[int, str] = {}
        self.next_id = 0

    def live(self, label: str | None = None) -> np.ndarray:
        return np.array(sorted(i for i in self.vectors if label is None or self.labels[i] == label), dtype=np.int64)


def check(gi: GalleryIndex, model: Model, queries: np.ndarray, labels: list[str]) -> None:
    assert gi.count == len(model.vectors)
    counts: dict[str, int] = {}
    for lab in model.labels.values():
        counts[lab] = counts.get(lab, 0) + 1
    assert gi.labels() == dict(sorted(counts.items()))
    for label in [None, *labels]:
        ids = model.live(label)
        rows, total = gi.items(0, 10_000, label=label)
        assert total == len(ids) and [r.id for r in rows] == ids.tolist()
        pages = [r.id for off in range(0, len(ids) + 7, 7) for r in gi.items(off, 7, label=label)[0]]
        assert pages == ids.tolist()  # page boundaries inside the base, across base and delta, in the delta
        hits = gi.search(queries, 8, label=label)
        if not len(ids):
            assert hits == [[] for _ in queries]
            continue
        expected = brute_force(np.stack([model.vectors[i] for i in ids]), ids, queries, 8)
        assert [[h.id for h in row] for row in hits] == expected.tolist(), label
        assert all(h.label == model.labels[h.id] for row in hits for h in row)
    for i in list(model.vectors)[:20]:
        record = gi.get(i)
        assert record is not None and record.label == model.labels[i] and record.sha256 == model.shas[i]
        assert gi.id_for_sha(model.shas[i]) == i


def test_random_changes_match_the_model(tmp_path: Path) -> None:
    """Adds (with duplicates), removes, relabels and compactions in random order: every read always equals
    the model; reopening from base + log, and from a compacted base, gives the same gallery."""
    rng = np.random.default_rng(7)
    dim, labels = 16, ["a", "b", "c", "d"]
    gi = GalleryIndex.create(tmp_path / "idx", model_hash="h" * 64, backbone="b", dim=dim, policy=MANUAL)
    model = Model()
    queries = clustered(6, dim, seed=99)
    pool = clustered(2000, dim, seed=1)
    for step in range(160):
        op = rng.choice(["add", "add", "remove", "relabel", "compact"], p=[0.35, 0.2, 0.2, 0.2, 0.05])
        live = sorted(model.vectors)
        if op == "add":
            n = int(rng.integers(1, 6))
            rows = rng.integers(0, len(pool), n)
            shas = [hashlib.sha256(f"v{r}".encode()).hexdigest() for r in rows]  # repeats: duplicates
            items = [NewItem(f"p{r}.png", str(rng.choice(labels)), s, 1, 1) for r, s in zip(rows, shas, strict=True)]
            done = gi.commit_add(pool[rows], items)
            for r, item, got in zip(rows, items, done.ids, strict=True):
                known = next((i for i, s in model.shas.items() if s == item.sha256), None)
                if known is None:
                    assert got == model.next_id
                    model.next_id += 1
                    model.vectors[got], model.labels[got], model.shas[got] = pool[r], item.label, item.sha256
                else:
                    assert got == known
        elif op == "remove" and live:
            victims = [int(i) for i in rng.choice(live, min(len(live), int(rng.integers(1, 4))), replace=False)]
            assert sorted(gi.remove([*victims, 10**6])) == sorted(victims)
            for i in victims:
                del model.vectors[i], model.labels[i], model.shas[i]
        elif op == "relabel" and live:
            target, label = int(rng.choice(live)), str(rng.choice(labels))
            gi.relabel(target, label)
            model.labels[target] = label
        elif op == "compact":
            gi.compact()
        if step % 20 == 19:
            check(gi, model, queries, labels)
    check(gi, model, queries, labels)
    assert gi.pending > 0  # the end state is base + log
    gi.close()
    reopened = GalleryIndex.open(tmp_path / "idx", policy=MANUAL)
    check(reopened, model, queries, labels)
    reopened.compact()
    check(reopened, model, queries, labels)
    reopened.close()
