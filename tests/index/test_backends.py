"""The gallery behaviour every backend shares (index/backend.py), run on the FAISS gallery and on Milvus (Milvus
Lite: a real Milvus engine in a local file). What only the FAISS gallery has (its log, compaction, followers,
storage failures) is tested in the other files here."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from index import IndexMismatchError, NewItem
from index.backend import (
    Gallery,
    create_empty_gallery,
    gallery_exists,
    open_gallery,
    parse_location,
    recorded_precision,
)
from tests.index.conftest import MANUAL, brute_force, clustered, new_items

BACKENDS = ["faiss", "milvus-lite"]
MakeGallery = Callable[..., tuple[Gallery, np.ndarray, list[int]]]


def location_for(backend: str, tmp_path: Path, name: str = "idx") -> str:
    return str(tmp_path / name) if backend == "faiss" else f"milvus-lite://{tmp_path / name}.db"


def reopen(gi: Gallery, location: str, **kwargs: object) -> Gallery:
    gi.close()
    return open_gallery(location, policy=MANUAL, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_gallery(backend: str, tmp_path: Path) -> Iterator[MakeGallery]:
    """``make(n, dim)``: a gallery of ``n`` clustered vectors with three labels; returns it, the vectors and
    their ids (in the order added)."""
    made: list[Gallery] = []

    def make(n: int = 200, dim: int = 16, name: str = "idx") -> tuple[Gallery, np.ndarray, list[int]]:
        gi = create_empty_gallery(
            location_for(backend, tmp_path, name),
            model_hash="m" * 64,
            backbone="seed-cnn",
            dim=dim,
            gallery_root=tmp_path / "gallery",
            policy=MANUAL,
        )
        made.append(gi)
        x = clustered(n, dim)
        ids = gi.add(x, new_items(n)) if n else []
        return gi, x, ids

    yield make
    for gi in made:
        gi.close()


def test_locations_choose_the_backend(tmp_path: Path) -> None:
    assert parse_location(tmp_path / "idx").kind == "faiss"
    assert parse_location(tmp_path / "g.db").kind == "milvus-lite"
    lite = parse_location(f"milvus-lite://{tmp_path}/g.db")
    assert (lite.kind, lite.path) == ("milvus-lite", tmp_path / "g.db")
    server = parse_location("milvus://milvus:19530/dogs")
    assert (server.kind, server.uri, server.collection) == ("milvus", "http://milvus:19530", "dogs")
    assert parse_location(Path("milvus://milvus:19530/dogs")) == server  # a settings Path folds the '//'
    assert parse_location("milvus://milvus/dogs").uri == "http://milvus:19530"
    with pytest.raises(ValueError, match="COLLECTION"):
        parse_location("milvus://milvus:19530/no-dashes")


def test_search_matches_brute_force_with_distances(make_gallery: MakeGallery) -> None:
    gi, x, ids = make_gallery(300)
    id_of = np.asarray(ids)
    queries = clustered(20, 16, seed=1)
    expected = id_of[brute_force(x, np.arange(300), queries, 10)]
    hits = gi.search(queries, 10)
    assert [[h.id for h in row] for row in hits] == expected.tolist()
    row = ids.index(hits[0][0].id)
    assert hits[0][0].similarity == pytest.approx(float(queries[0] @ x[row]), abs=1e-5)
    assert hits[0][0].distance == pytest.approx(np.linalg.norm(queries[0] - x[row]), abs=1e-4)
    assert hits[0][0].label == f"cls{row % 3}" and hits[0][0].path.endswith(f"img{row}.png")


def test_k_larger_than_count_and_label_filter(make_gallery: MakeGallery) -> None:
    gi, x, ids = make_gallery(90)
    assert [len(row) for row in gi.search(x[:2], 500)] == [90, 90]
    queries = clustered(5, 16, seed=2)
    mine = np.arange(90)[np.arange(90) % 3 == 1]
    hits = gi.search(queries, 10, label="cls1")
    expected = np.asarray(ids)[brute_force(x[mine], mine, queries, 10)]
    assert [[h.id for h in row] for row in hits] == expected.tolist()
    assert all(h.label == "cls1" for row in hits for h in row)
    assert len(gi.search(queries[:1], 500, label="cls1")[0]) == 30
    assert gi.search(queries[:1], 5, label="no-such-label") == [[]]
    assert gi.search(queries[:1], 5, label='say "hi" \\ or not') == [[]]  # quotes in a filter stay a value


def test_empty_gallery_and_bad_input(make_gallery: MakeGallery) -> None:
    gi, _, _ = make_gallery(0)
    assert gi.search(clustered(2, 16), 5) == [[], []]
    assert gi.items() == ([], 0) and gi.labels() == {}
    with pytest.raises(ValueError, match="shape"):
        gi.search(np.zeros((2, 15), np.float32), 5)
    with pytest.raises(ValueError, match="NaN"):
        gi.search(np.full((1, 16), np.nan, np.float32), 5)
    with pytest.raises(ValueError, match="k must"):
        gi.search(clustered(1, 16), 0)
    with pytest.raises(ValueError, match="zero"):
        gi.add(np.zeros((1, 16), np.float32), new_items(1))
    with pytest.raises(ValueError, match=">= 0"):
        gi.items(-1, 5)
    assert gi.version == 1 and gi.count == 0  # refused requests change nothing


def test_ids_are_stable_never_reused_and_survive_reopening(
    make_gallery: MakeGallery, backend: str, tmp_path: Path
) -> None:
    gi, x, ids = make_gallery(60)
    assert len(set(ids)) == 60 and ids == sorted(ids)  # in the order added
    assert gi.remove([ids[5], ids[7], ids[5], max(ids) + 10**6]) == [ids[5], ids[7]]
    assert gi.get(ids[5]) is None and gi.vector(ids[7]) is None
    assert np.allclose(gi.vector(ids[6]), x[6], atol=1e-6)  # other ids never shift
    extra = clustered(3, 16, seed=9)
    new_ids = gi.add(extra, new_items(3, start=100))
    assert new_ids == sorted(new_ids) and min(new_ids) > max(ids)  # never reused, growing
    assert gi.count == 61 and np.allclose(gi.vectors([new_ids[1], ids[0]]), [extra[1], x[0]], atol=1e-6)
    version = gi.version
    gi = reopen(gi, location_for(backend, tmp_path), model_hash="m" * 64, dim=16)
    assert gi.version == version and gi.count == 61
    rows, total = gi.items(0, 1000)
    assert total == 61 and [r.id for r in rows] == sorted({*ids, *new_ids} - {ids[5], ids[7]})
    assert gi.search(extra[2:3], 1)[0][0].id == new_ids[2]
    [after] = gi.add(clustered(1, 16, seed=3), new_items(1, start=200))
    assert after > max(new_ids)  # the next id survives reopening
    gi.close()


def test_same_content_is_not_added_twice(make_gallery: MakeGallery) -> None:
    gi, _, ids = make_gallery(10)
    dup = new_items(2, start=3)  # contents of the 4th and 5th items
    fresh = NewItem("new.png", "cls0", "f" * 64, 1, 1)
    done = gi.commit_add(clustered(4, 16, seed=5), [dup[0], fresh, dup[1], fresh])
    [new] = done.created
    assert done.ids == [ids[3], new, ids[4], new] and new not in ids
    assert gi.count == 11 and gi.id_for_sha("f" * 64) == new
    assert gi.add(clustered(1, 16, seed=6), [fresh]) == [new]
    gi.remove([ids[3]])
    assert gi.id_for_sha(dup[0].sha256) is None
    [back] = gi.add(clustered(1, 16, seed=7), [dup[0]])
    assert back > new  # removed content comes back under a new id


def test_items_labels_paths_versions(make_gallery: MakeGallery, tmp_path: Path) -> None:
    gi, _, ids = make_gallery(10)
    assert gi.version == 2  # created empty (1), then one add
    page, total = gi.items(offset=2, limit=3, label="cls0")
    assert total == 4 and [r.id for r in page] == [ids[6], ids[9]]
    assert gi.labels() == {"cls0": 4, "cls1": 3, "cls2": 3}
    assert gi.image_path(ids[4]) == tmp_path / "gallery" / "cls1/img4.png"
    [uid] = gi.add(clustered(1, 16, seed=7), [NewItem("media/ab.png", "up", "a" * 64, 2, 2)])
    assert gi.image_path(uid) == gi.media_dir / "ab.png" and gi.media_dir.is_dir()
    assert gi.image_path(max(ids) + 999) is None
    record = gi.get(uid)
    assert record is not None and record.added_at == pytest.approx(time.time(), abs=60)
    assert (record.label, record.sha256, record.width, record.height) == ("up", "a" * 64, 2, 2)
    assert [r.id for r in gi.all_records()] == sorted([*ids, uid])
    versions = [gi.version]
    gi.relabel(uid, "other")
    versions.append(gi.version)
    gi.remove([uid])
    versions.append(gi.version)
    assert versions == [3, 4, 5]  # one version per change
    gi.remove([uid])
    assert gi.version == 5  # nothing changed: no new version


def test_relabel_moves_an_item_between_labels(make_gallery: MakeGallery, backend: str, tmp_path: Path) -> None:
    gi, x, ids = make_gallery(30)
    done = gi.relabel(ids[3], "cls1")
    assert done.ids == [ids[3]] and done.version == gi.version
    assert gi.relabel(max(ids) + 999, "x").ids == []  # unknown: nothing changes
    before = gi.version
    assert gi.relabel(ids[3], "cls1").ids == [ids[3]] and gi.version == before  # the same label: no new version
    for stage in ("now", "reopened"):
        assert gi.get(ids[3]).label == "cls1", stage  # type: ignore[union-attr]
        assert gi.labels() == {"cls0": 9, "cls1": 11, "cls2": 10}, stage
        page, total = gi.items(0, 100, label="cls1")
        assert total == 11 and ids[3] in [r.id for r in page], stage
        hits = gi.search(x[3:4], 1, label="cls1")[0]
        assert hits[0].id == ids[3] and hits[0].label == "cls1", stage
        assert np.allclose(gi.vector(ids[3]), x[3], atol=1e-6), stage  # same vector, same image
        assert all(h.id != ids[3] for h in gi.search(x[3:4], 50, label="cls0")[0]), stage
        if stage == "now":
            gi = reopen(gi, location_for(backend, tmp_path))
    gi.close()


def test_another_model_is_refused_with_the_same_error(make_gallery: MakeGallery, backend: str, tmp_path: Path) -> None:
    gi, _, _ = make_gallery(3)
    gi.close()
    location = location_for(backend, tmp_path)
    assert gallery_exists(location) and not gallery_exists(location_for(backend, tmp_path, "other"))
    with pytest.raises(
        IndexMismatchError, match=r"built by model mmmmmmmmmmmm, not by this checkpoint \(xxxxxxxxxxxx\)"
    ):
        open_gallery(location, model_hash="x" * 64)
    with pytest.raises(IndexMismatchError, match="holds 16-d vectors; this model makes 32-d"):
        open_gallery(location, dim=32)
    with pytest.raises(ValueError, match="already holds an index"):
        create_empty_gallery(location, model_hash="x", backbone="b", dim=16)
    with pytest.raises(FileNotFoundError, match="No index at"):
        open_gallery(location_for(backend, tmp_path, "nothing"))
    gi = open_gallery(location, model_hash="m" * 64, dim=16)
    assert (gi.count, gi.dim, gi.model_hash, gi.backbone) == (3, 16, "m" * 64, "seed-cnn")
    gi.close()


def test_the_embeddings_precision_is_recorded_and_other_numerics_refused(backend: str, tmp_path: Path) -> None:
    """int8 and float vectors never share a gallery, on either backend; fp32 and fp16 may (same numerics)."""
    location = location_for(backend, tmp_path)
    gi = create_empty_gallery(location, model_hash="m" * 64, backbone="b", dim=16, precision="int8")
    gi.close()
    assert recorded_precision(location) == "int8"
    assert recorded_precision(location_for(backend, tmp_path, "nothing")) is None
    with pytest.raises(IndexMismatchError, match="holds int8 embeddings; this embedder computes in fp32"):
        open_gallery(location, model_hash="m" * 64, dim=16, precision="fp32")
    gi = open_gallery(location, model_hash="m" * 64, dim=16, precision="int8")
    assert gi.precision == "int8" and gi.info()["precision"] == "int8"
    gi.close()
    floats = location_for(backend, tmp_path, "floats")
    create_empty_gallery(floats, model_hash="m" * 64, backbone="b", dim=16).close()
    open_gallery(floats, precision="fp16").close()
    with pytest.raises(IndexMismatchError, match="holds fp32 embeddings; this embedder computes in int8"):
        open_gallery(floats, precision="int8")


def test_random_changes_match_a_model(make_gallery: MakeGallery, backend: str, tmp_path: Path) -> None:
    """Adds (with duplicates), removes and relabels in random order: every read equals a plain-Python model,
    before and after reopening."""
    rng = np.random.default_rng(7)
    labels = ["a", "b", "c", "d"]
    gi, _, _ = make_gallery(0)
    vectors: dict[int, np.ndarray] = {}
    label_of: dict[int, str] = {}
    sha_of: dict[int, str] = {}
    issued: set[int] = set()
    queries, pool = clustered(6, 16, seed=99), clustered(2000, 16, seed=1)

    def check() -> None:
        assert gi.count == len(vectors)
        counts: dict[str, int] = {}
        for lab in label_of.values():
            counts[lab] = counts.get(lab, 0) + 1
        assert gi.labels() == dict(sorted(counts.items()))
        for label in [None, *labels]:
            live = np.array(sorted(i for i in vectors if label is None or label_of[i] == label), dtype=np.int64)
            pages = [r.id for off in range(0, len(live) + 7, 7) for r in gi.items(off, 7, label=label)[0]]
            assert pages == live.tolist()
            hits = gi.search(queries, 8, label=label)
            if not len(live):
                assert hits == [[] for _ in queries]
                continue
            expected = brute_force(np.stack([vectors[i] for i in live]), live, queries, 8)
            assert [[h.id for h in row] for row in hits] == expected.tolist(), label
        for i in list(vectors)[:10]:
            record = gi.get(i)
            assert record is not None and (record.label, record.sha256) == (label_of[i], sha_of[i])
            assert gi.id_for_sha(sha_of[i]) == i

    for step in range(60):
        op = rng.choice(["add", "remove", "relabel"], p=[0.5, 0.25, 0.25])
        live_ids = sorted(vectors)
        if op == "add":
            rows = rng.integers(0, len(pool), int(rng.integers(1, 6)))
            shas = [hashlib.sha256(f"v{r}".encode()).hexdigest() for r in rows]
            items = [NewItem(f"p{r}.png", str(rng.choice(labels)), s, 1, 1) for r, s in zip(rows, shas, strict=True)]
            done = gi.commit_add(pool[rows], items)
            for r, item, got in zip(rows, items, done.ids, strict=True):
                known = next((i for i, s in sha_of.items() if s == item.sha256), None)
                if known is None:
                    assert got not in issued and got > max(issued, default=-1)
                    issued.add(got)
                    vectors[got], label_of[got], sha_of[got] = pool[r], item.label, item.sha256
                else:
                    assert got == known
        elif op == "remove" and live_ids:
            victims = [int(i) for i in rng.choice(live_ids, min(len(live_ids), int(rng.integers(1, 4))), replace=False)]
            assert sorted(gi.remove([*victims, -5])) == sorted(victims)
            for i in victims:
                del vectors[i], label_of[i], sha_of[i]
        elif op == "relabel" and live_ids:
            target, label = int(rng.choice(live_ids)), str(rng.choice(labels))
            gi.relabel(target, label)
            label_of[target] = label
        if step % 20 == 19:
            check()
    gi = reopen(gi, location_for(backend, tmp_path))
    check()
    gi.close()


KILLED_WRITER = """
import os, sys
import numpy as np
from index.backend import open_gallery
from tests.index.conftest import clustered, new_items
gi = open_gallery(sys.argv[1])
ids = gi.add(clustered(5, 16, seed=3), new_items(5, start=500))
print(" ".join(map(str, ids)), flush=True)
os.kill(os.getpid(), 9)  # no close, no flush: what add acknowledged must already be durable
"""


def test_an_acknowledged_add_survives_kill_9(make_gallery: MakeGallery, backend: str, tmp_path: Path) -> None:
    gi, _, _ = make_gallery(3)
    gi.close()
    location = location_for(backend, tmp_path)
    done = subprocess.run([sys.executable, "-c", KILLED_WRITER, location], capture_output=True, text=True, timeout=120)
    assert done.returncode == -9, done.stderr
    acknowledged = [int(i) for i in done.stdout.split()]
    gi = open_gallery(location)
    assert gi.count == 8 and all(gi.get(i) is not None for i in acknowledged)
    gi.close()


def test_pages_and_batches_beyond_milvus_query_limit(make_gallery: MakeGallery) -> None:
    """Milvus answers at most 16,384 rows per request: a larger page, vector batch or removal still gets all."""
    n = 17_000
    gi, x, ids = make_gallery(n, dim=4)
    rows, total = gi.items(0, n)
    assert total == n and [r.id for r in rows] == ids
    assert np.allclose(gi.vectors(ids), x, atol=1e-6)
    assert gi.remove(ids[:16_500]) == ids[:16_500] and gi.count == 500
