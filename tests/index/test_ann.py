"""Approximate index types against exact brute force, and the automatic choice of type."""

from __future__ import annotations

import numpy as np
import pytest

from index import choose_factory
from index.factory import EXACT_MAX, IVF_FLAT_MAX, make_index
from tests.index.conftest import brute_force, clustered

N, DIM = 2000, 32


def recall_at(found: list[list[int]], truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)]))


@pytest.mark.parametrize(
    ("factory", "params"),
    [
        ("IVF64,Flat", {"nprobe": 16}),
        ("HNSW32", {"efSearch": 128}),
        ("IVF32,PQ8,RFlat", {"nprobe": 16, "k_factor": 8}),  # compressed codes + exact re-ranking
    ],
)
def test_approximate_recall_vs_exact(make_index, factory: str, params: dict[str, float]) -> None:  # type: ignore[no-untyped-def]
    gi, x = make_index(N, DIM, factory=factory)
    gi.set_search_params(**params)
    gi.compact()  # the first base: trained on the gallery, the delta folded in
    assert gi.base_version == gi.version and gi.pending == 0
    queries = clustered(100, DIM, seed=11)
    truth = brute_force(x, np.arange(N), queries, 10)
    found = [[h.id for h in row] for row in gi.search(queries, 10)]
    assert recall_at(found, truth) >= 0.95
    # Removed ids (in the delta: filtered by an id selector, or over-fetched on HNSW and refine) never come
    # back, before and after compaction takes them out of the base (IVF removes; HNSW and refine rebuild).
    gone = set(gi.remove(list(range(0, N, 7))))
    keep = np.array(sorted(set(range(N)) - gone))
    mine = keep[keep % 3 == 2]
    for stage in ("delta", "compacted"):
        assert gi.count == N - len(gone)
        found = [[h.id for h in row] for row in gi.search(queries, 10)]
        assert not gone & {i for row in found for i in row}, stage
        assert recall_at(found, brute_force(x[keep], keep, queries, 10)) >= 0.95, stage
        # The label filter is exact on every type (selector on IVF, brute force over the label on the others).
        found = [[h.id for h in row] for row in gi.search(queries[:10], 10, label="cls2")]
        assert all(i % 3 == 2 for row in found for i in row), stage
        assert recall_at(found, brute_force(x[mine], mine, queries[:10], 10)) >= 0.9, stage
        gi.compact()
    assert gi.info()["search_params"] == params


def test_search_params_survive_reopen_and_compaction(make_index) -> None:  # type: ignore[no-untyped-def]
    gi, _ = make_index(2000, DIM, factory="IVF32,Flat")
    gi.compact()
    gi.set_search_params(nprobe=7)  # a logged change
    from index import GalleryIndex

    gi.close()
    reopened = GalleryIndex.open(gi.index_dir)
    assert reopened.info()["search_params"] == {"nprobe": 7} and reopened.pending == 0
    reopened.compact()  # folded into the next base's manifest
    reopened.close()
    assert GalleryIndex.open(gi.index_dir).info()["search_params"] == {"nprobe": 7}


def test_untrained_type_needs_enough_vectors(make_index) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="at least 64"):
        make_index(20, DIM, factory="IVF64,Flat")


def test_choose_factory_follows_the_size_guidelines() -> None:
    assert choose_factory(10, 256) == "IDMap2,Flat"
    assert choose_factory(EXACT_MAX, 256) == "IDMap2,Flat"
    assert choose_factory(EXACT_MAX + 1, 256) == "IVF4096,Flat"
    assert choose_factory(IVF_FLAT_MAX + 1, 256) == "IVF16384,PQ64"
    assert choose_factory(IVF_FLAT_MAX + 1, 100) == "IVF16384,PQ25"  # subquantizers divide the dimension


def test_types_without_ids_are_wrapped() -> None:
    assert make_index("Flat", 8)[1] == "IDMap2,Flat"
    assert make_index("IVF8,Flat", 8)[1] == "IVF8,Flat"
    with pytest.raises(ValueError, match="Invalid FAISS factory"):
        make_index("NotAnIndex", 8)


def test_pq_gallery_reranks_from_an_8_bit_copy_on_disk(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from index import GalleryIndex, IndexCorruptError
    from tests.index.conftest import MANUAL, new_items

    everything, queries = clustered(3500, DIM), clustered(50, DIM, seed=11)
    x, extra = everything[:3000], everything[3000:]
    made = {}
    for name, rerank in (("plain", False), ("ranked", True)):
        gi = GalleryIndex.create(
            tmp_path / name,
            model_hash="m" * 64,
            backbone="b",
            dim=DIM,
            factory="IVF16,PQ4",
            policy=MANUAL,
            rerank=rerank,
        )
        gi.add(x, new_items(3000))
        gi.set_search_params(nprobe=16, rerank=20)  # 200 candidates re-ranked (ignored without the file)
        gi.compact()
        made[name] = gi
    truth = brute_force(x, np.arange(3000), queries, 10)
    plain = recall_at([[h.id for h in row] for row in made["plain"].search(queries, 10)], truth)
    ranked = recall_at([[h.id for h in row] for row in made["ranked"].search(queries, 10)], truth)
    assert ranked >= 0.95 and ranked > plain + 0.4  # 4-byte codes alone: about 0.4
    gi = made["ranked"]
    snap = gi.index_dir / "snapshots" / (gi.index_dir / "CURRENT").read_text().strip()
    assert (snap / "rerank.sq8").is_file() and not (
        made["plain"].index_dir / "snapshots" / snap.name / "rerank.sq8"
    ).exists()
    # Changes folded in by the next compaction get their rows; removed ids never come back.
    gi.add(extra, new_items(500, start=3000))
    gone = set(gi.remove(list(range(0, 3000, 5))))
    gi.compact()
    gi.close()
    reopened = GalleryIndex.open(gi.index_dir)
    keep = np.array(sorted(set(range(3500)) - gone))
    found = [[h.id for h in row] for row in reopened.search(queries, 10)]
    assert not gone & {i for row in found for i in row}
    assert recall_at(found, brute_force(everything[keep], keep, queries, 10)) >= 0.95
    snap = gi.index_dir / "snapshots" / (gi.index_dir / "CURRENT").read_text().strip()
    data = bytearray((snap / "rerank.sq8").read_bytes())
    data[-1] ^= 0xFF
    (snap / "rerank.sq8").write_bytes(bytes(data))
    with pytest.raises(IndexCorruptError, match=r"rerank.sq8 is damaged"):
        GalleryIndex.open(gi.index_dir)
    made["plain"].close()
