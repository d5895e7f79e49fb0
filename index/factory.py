"""Which FAISS index to build, how to make it, and how to search it with the right knobs.

All indexes use inner product on unit vectors (cosine), carry stable int64 ids, and can reconstruct the
stored vectors. The automatic choice follows the FAISS guidelines ("Guidelines to choose an index"):
exact search while it is affordable, inverted lists with full vectors up to ~10M, compressed codes beyond.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from typing import Any, cast

import faiss
import numpy as np

log = logging.getLogger(__name__)
_faiss: Any = faiss  # the bundled stubs lack the search-parameter classes and DirectMap

EXACT_MAX = 1_000_000  # up to here an exact scan is fast enough and needs no training
IVF_FLAT_MAX = 10_000_000  # up to here full vectors in inverted lists fit in memory (~1 KB per 256-d vector)
DEFAULT_FACTORY = "IDMap2,Flat"


def _nlist(n: int) -> int:
    """Inverted lists: about 4*sqrt(n) (the guideline's 4..16*sqrt(n)), a power of two."""
    return 1 << max(4, round(math.log2(4 * math.sqrt(max(n, 1)))))


def choose_factory(n: int, dim: int) -> str:
    if n <= EXACT_MAX:
        return DEFAULT_FACTORY
    if n <= IVF_FLAT_MAX:
        return f"IVF{_nlist(n)},Flat"
    m = max(k for k in range(1, max(1, dim // 4) + 1) if dim % k == 0)  # PQ subquantizers must divide dim
    return f"IVF{_nlist(n)},PQ{m}"


def components(index: faiss.Index) -> Iterator[Any]:
    """The index and the indexes it wraps, outermost first, each downcast to its real class."""
    idx = faiss.downcast_index(index)
    while True:
        yield idx
        if isinstance(idx, faiss.IndexIDMap | faiss.IndexIDMap2 | faiss.IndexPreTransform):
            idx = faiss.downcast_index(idx.index)
        elif isinstance(idx, faiss.IndexRefine):
            idx = faiss.downcast_index(idx.base_index)
        else:
            return


def default_search_params(index: faiss.Index) -> dict[str, float]:
    """Knobs that reach recall@10 >= 0.95 on clustered data (see bench/bench_index.py)."""
    params: dict[str, float] = {}
    for idx in components(index):
        if isinstance(idx, faiss.IndexIVF):
            params["nprobe"] = max(8, idx.nlist // 64)
        elif isinstance(idx, faiss.IndexHNSW):
            params["efSearch"] = 128
        elif isinstance(idx, faiss.IndexRefine):
            params["k_factor"] = 4
    return params


def apply_search_params(index: faiss.Index, params: dict[str, float]) -> None:
    for idx in components(index):
        if isinstance(idx, faiss.IndexIVF) and "nprobe" in params:
            idx.nprobe = int(params["nprobe"])
        elif isinstance(idx, faiss.IndexHNSW) and "efSearch" in params:
            idx.hnsw.efSearch = int(params["efSearch"])
        elif isinstance(idx, faiss.IndexRefine) and "k_factor" in params:
            idx.k_factor = float(params["k_factor"])


def make_index(factory: str, dim: int) -> tuple[faiss.Index, str]:
    """An empty index for ``factory`` that takes explicit ids (wrapped in ``IDMap2`` when the type needs it).

    Returns the index and the factory string actually used."""
    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise ValueError(f"Invalid FAISS factory string {factory!r}: {str(exc).splitlines()[-1]}") from exc
    top = faiss.downcast_index(index)
    if not isinstance(top, faiss.IndexIDMap | faiss.IndexIDMap2 | faiss.IndexIVF):
        factory = f"IDMap2,{factory}"
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    for idx in components(index):
        if isinstance(idx, faiss.IndexIVF):
            # A hash table from id to list position: reconstruct(id) and remove_ids with arbitrary ids.
            idx.set_direct_map_type(_faiss.DirectMap.Hashtable)
        if isinstance(idx, faiss.IndexIVFPQ | faiss.IndexPQ):
            cast(
                Any, idx
            ).do_polysemous_training = False  # only serves Hamming pre-filtering, which we do not use; slow
    apply_search_params(index, default_search_params(index))
    return index, factory


def min_train_size(index: faiss.Index) -> int:
    """Vectors needed before an untrained index can be trained (FAISS refuses fewer than the centroids)."""
    need = 1
    for idx in components(index):
        if isinstance(idx, faiss.IndexIVF):
            need = max(need, idx.nlist)
        if isinstance(idx, faiss.IndexIVFPQ):
            need = max(need, 1 << idx.pq.nbits)
    return need


def training_sample(x: np.ndarray, need: int, per_centroid: int = 64, seed: int = 0) -> np.ndarray:
    """At most ``per_centroid`` points per centroid: k-means quality saturates there, time does not."""
    cap = max(need * per_centroid, 10_000)
    if len(x) <= cap:
        return x
    rows = np.sort(np.random.default_rng(seed).choice(len(x), cap, replace=False))
    return np.ascontiguousarray(x[rows])


def search_params(index: faiss.Index, selector: faiss.IDSelector | None) -> faiss.SearchParameters:
    """Per-call parameters carrying ``selector`` and the index's own knobs (FAISS would reset them)."""
    chain = list(components(index))

    def for_component(i: int) -> faiss.SearchParameters:
        idx = chain[i]
        if isinstance(idx, faiss.IndexIDMap | faiss.IndexIDMap2 | faiss.IndexPreTransform):
            return for_component(i + 1)
        if isinstance(idx, faiss.IndexRefine):
            base = for_component(i + 1)
            p = _faiss.IndexRefineSearchParameters(k_factor=idx.k_factor, sel=selector)
            p.base_index_params = base
            p.referenced_objects = [base]  # keep the Python object alive as long as p
            return p
        if isinstance(idx, faiss.IndexIVF):
            return _faiss.SearchParametersIVF(sel=selector, nprobe=idx.nprobe)
        if isinstance(idx, faiss.IndexHNSW):
            return _faiss.SearchParametersHNSW(sel=selector, efSearch=idx.hnsw.efSearch)
        return _faiss.SearchParameters(sel=selector)

    return for_component(0)


def rebuild_without(index: faiss.Index, keep_ids: np.ndarray) -> faiss.Index:
    """A copy holding only ``keep_ids``, for types that cannot remove in place (HNSW, refine).

    ``reset`` empties the copy but keeps what it learnt in training, so nothing is retrained."""
    vectors = np.vstack([index.reconstruct(int(i)) for i in keep_ids]) if len(keep_ids) else None
    fresh = faiss.clone_index(index)
    fresh.reset()
    apply_search_params(fresh, current_search_params(index))
    if vectors is not None:
        fresh.add_with_ids(vectors.astype(np.float32), keep_ids.astype(np.int64))
    log.warning("rebuilt the index without the removed ids (%d vectors kept)", len(keep_ids))
    return fresh


def current_search_params(index: faiss.Index) -> dict[str, float]:
    params: dict[str, float] = {}
    for idx in components(index):
        if isinstance(idx, faiss.IndexIVF):
            params["nprobe"] = idx.nprobe
        elif isinstance(idx, faiss.IndexHNSW):
            params["efSearch"] = idx.hnsw.efSearch
        elif isinstance(idx, faiss.IndexRefine):
            params["k_factor"] = idx.k_factor
    return params
