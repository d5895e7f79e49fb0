"""Which FAISS index to build, how to make it, and how to search it with the right knobs.

All indexes use inner product on unit vectors (cosine), carry stable int64 ids, and can reconstruct the
stored vectors. The automatic choice follows the FAISS guidelines ("Guidelines to choose an index"):
exact search while it is affordable, inverted lists with full vectors up to ~10M, compressed codes beyond.

What differs between index types (the wrapped index, the search knob and its default, how much training
data it needs, whether FAISS applies an id selector faithfully) is one row of ``_TYPES``; the functions
below walk an index's components and read their row instead of testing types one by one.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np

log = logging.getLogger(__name__)
_faiss: Any = faiss  # the bundled stubs lack the search-parameter classes and DirectMap

EXACT_MAX = 1_000_000  # up to here an exact scan is fast enough and needs no training
IVF_FLAT_MAX = 10_000_000  # up to here full vectors in inverted lists fit in memory (~1 KB per 256-d vector)
DEFAULT_FACTORY = "IDMap2,Flat"

# (component, knob value, selector, parameters of the wrapped index) -> per-call search parameters
ParamsMaker = Callable[[Any, float, Any, Any], Any]


def _refine_params(idx: Any, k_factor: float, selector: Any, inner: Any) -> Any:
    p = _faiss.IndexRefineSearchParameters(k_factor=k_factor, sel=selector)
    p.base_index_params = inner
    p.referenced_objects = [inner]  # keep the Python object alive as long as p
    return p


def _set_ef(idx: Any, value: float) -> None:
    idx.hnsw.efSearch = int(value)


def _ivf_train_need(idx: Any) -> int:
    pq = getattr(idx, "pq", None)  # IVF-PQ also trains 2**nbits codewords per subquantizer
    return max(int(idx.nlist), 1 << pq.nbits if pq is not None else 1)


def _ivf_setup(idx: Any) -> None:
    # A hash table from id to list position: reconstruct(id) and remove_ids with arbitrary ids.
    idx.set_direct_map_type(_faiss.DirectMap.Hashtable)
    if hasattr(idx, "do_polysemous_training"):
        idx.do_polysemous_training = False  # only serves Hamming pre-filtering, which we do not use; slow


def _pq_setup(idx: Any) -> None:
    idx.do_polysemous_training = False


@dataclass(frozen=True)
class TypeSettings:
    """What one kind of FAISS component needs: the row of ``_TYPES`` for it (and its subclasses)."""

    kind: type
    inner: Callable[[Any], Any] | None = None  # a wrapper: the index it wraps
    knob: str | None = None  # its search setting
    default: Callable[[Any], float] = lambda idx: 0.0
    get: Callable[[Any], float] = lambda idx: 0.0
    set: Callable[[Any, float], None] = lambda idx, value: None
    params: ParamsMaker | None = None  # per-call parameters carrying the knob and a selector
    train_need: Callable[[Any], int] = lambda idx: 1  # vectors needed before training can start
    exact_selector: bool = True  # False: an id selector costs recall (graph search, re-ranking)
    setup: Callable[[Any], None] = lambda idx: None  # once, on a new empty index
    remove_by_array: bool = False  # remove_ids takes only an IDSelectorArray (IVF's id -> list hash table)


_TYPES: tuple[TypeSettings, ...] = (
    TypeSettings(faiss.IndexIDMap, inner=lambda idx: idx.index),  # IndexIDMap2 is a subclass
    TypeSettings(faiss.IndexPreTransform, inner=lambda idx: idx.index),
    TypeSettings(
        faiss.IndexRefine,
        inner=lambda idx: idx.base_index,
        knob="k_factor",
        default=lambda idx: 4.0,
        get=lambda idx: float(idx.k_factor),
        set=lambda idx, value: setattr(idx, "k_factor", float(value)),
        params=_refine_params,
        exact_selector=False,
    ),
    TypeSettings(
        faiss.IndexIVF,
        knob="nprobe",
        default=lambda idx: float(max(8, idx.nlist // 64)),
        get=lambda idx: float(idx.nprobe),
        set=lambda idx, value: setattr(idx, "nprobe", int(value)),
        params=lambda idx, value, sel, inner: _faiss.SearchParametersIVF(sel=sel, nprobe=int(value)),
        train_need=_ivf_train_need,
        setup=_ivf_setup,
        remove_by_array=True,
    ),
    TypeSettings(
        faiss.IndexHNSW,
        knob="efSearch",
        default=lambda idx: 128.0,
        get=lambda idx: float(idx.hnsw.efSearch),
        set=_set_ef,
        params=lambda idx, value, sel, inner: _faiss.SearchParametersHNSW(sel=sel, efSearch=int(value)),
        exact_selector=False,
    ),
    TypeSettings(faiss.IndexPQ, train_need=lambda idx: 1 << idx.pq.nbits, setup=_pq_setup),
)
_PLAIN = TypeSettings(object)  # flat and everything without a row: no knob, no training, faithful selector


def settings_of(idx: Any) -> TypeSettings:
    return next((t for t in _TYPES if isinstance(idx, t.kind)), _PLAIN)


def components(index: faiss.Index) -> Iterator[tuple[Any, TypeSettings]]:
    """The index and the indexes it wraps, outermost first, each downcast to its real class, with its row."""
    idx = faiss.downcast_index(index)
    while True:
        row = settings_of(idx)
        yield idx, row
        if row.inner is None:
            return
        idx = faiss.downcast_index(row.inner(idx))


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


def default_search_params(index: faiss.Index) -> dict[str, float]:
    """Knobs that reach recall@10 >= 0.95 on clustered data (see bench/bench_index.py)."""
    return {row.knob: row.default(idx) for idx, row in components(index) if row.knob}


def current_search_params(index: faiss.Index) -> dict[str, float]:
    return {row.knob: row.get(idx) for idx, row in components(index) if row.knob}


def apply_search_params(index: faiss.Index, params: dict[str, float]) -> None:
    for idx, row in components(index):
        if row.knob in params:
            row.set(idx, params[row.knob])


def selector_is_exact(index: faiss.Index) -> bool:
    """FAISS applies an id selector faithfully to flat and IVF scans; graph and refine indexes lose recall."""
    return all(row.exact_selector for _, row in components(index))


def make_index(factory: str, dim: int) -> tuple[faiss.Index, str]:
    """An empty index for ``factory`` that takes explicit ids (wrapped in ``IDMap2`` when the type needs it).

    Returns the index and the factory string actually used."""
    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise ValueError(f"Invalid FAISS factory string {factory!r}: {str(exc).splitlines()[-1]}") from exc
    if not isinstance(faiss.downcast_index(index), faiss.IndexIDMap | faiss.IndexIVF):
        factory = f"IDMap2,{factory}"
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    for idx, row in components(index):
        row.setup(idx)
    apply_search_params(index, default_search_params(index))
    return index, factory


def min_train_size(index: faiss.Index) -> int:
    """Vectors needed before an untrained index can be trained (FAISS refuses fewer than the centroids)."""
    return max(row.train_need(idx) for idx, row in components(index))


def training_sample(x: np.ndarray, need: int, per_centroid: int = 64, seed: int = 0) -> np.ndarray:
    """At most ``per_centroid`` points per centroid: k-means quality saturates there, time does not."""
    cap = max(need * per_centroid, 10_000)
    if len(x) <= cap:
        return x
    rows = np.sort(np.random.default_rng(seed).choice(len(x), cap, replace=False))
    return np.ascontiguousarray(x[rows])


def search_params(index: faiss.Index, knobs: dict[str, float], selector: Any | None) -> Any:
    """Per-call parameters carrying ``selector`` and ``knobs`` (FAISS would otherwise reset the knobs)."""
    chain = list(components(index))

    def for_component(i: int) -> Any:
        idx, row = chain[i]
        inner = for_component(i + 1) if row.inner is not None else None
        if row.params is not None and row.knob is not None:
            return row.params(idx, knobs.get(row.knob, row.get(idx)), selector, inner)
        if inner is not None:  # a plain wrapper (id map, transform) passes its inner parameters on
            return inner
        return _faiss.SearchParameters(sel=selector)

    return for_component(0)


def remove_ids(index: faiss.Index, ids: np.ndarray, all_ids: Callable[[], np.ndarray]) -> faiss.Index:
    """``index`` without ``ids``: in place where the type can remove, else a rebuilt copy (HNSW, refine),
    which needs every id the index holds (``all_ids()``)."""
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    by_array = any(row.remove_by_array for _, row in components(index))
    # IDSelectorArray is a linear scan per test: fine for a hash table that looks each id up once, not for
    # a flat index that tests every stored vector (IDSelectorBatch hashes the ids).
    selector = _faiss.IDSelectorArray(len(ids), faiss.swig_ptr(ids)) if by_array else faiss.IDSelectorBatch(ids)
    try:
        removed = index.remove_ids(selector)
    except RuntimeError:
        return rebuild_without(index, np.setdiff1d(all_ids(), ids))
    if removed != len(ids):
        raise RuntimeError(f"FAISS removed {removed} of {len(ids)} ids")
    return index


def rebuild_without(index: faiss.Index, keep_ids: np.ndarray) -> faiss.Index:
    """A copy holding only ``keep_ids``, for types that cannot remove in place (HNSW, refine).

    ``reset`` empties the copy but keeps what it learnt in training, so nothing is retrained."""
    fresh = faiss.clone_index(index)
    fresh.reset()
    apply_search_params(fresh, current_search_params(index))
    keep_ids = np.ascontiguousarray(keep_ids, dtype=np.int64)
    for start in range(0, len(keep_ids), 65536):  # a chunk at a time: never a second copy of everything
        ids = keep_ids[start : start + 65536]
        fresh.add_with_ids(np.ascontiguousarray(index.reconstruct_batch(ids), dtype=np.float32), ids)
    log.warning("rebuilt the index without the removed ids (%d vectors kept)", len(keep_ids))
    return fresh
