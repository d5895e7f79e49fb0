"""Search one published version: the base (FAISS, removed ids filtered) and the deltas (exact), merged.

The base is searched with an id selector built for the view: ``NOT removed`` without a label; with one,
``(base ids of the label AND NOT removed-or-relabelled) OR base ids relabelled to it``. The base's ids per
label and their selector are cached per base; the small removed / relabelled lists per view. Index types
on which a selector costs recall (HNSW, re-ranking) over-fetch instead of filtering without a label, and
search the label's live vectors exactly with one (as before the log). Each delta is searched exactly with
one matrix product over its live rows. The top-k lists are merged by score; FAISS's ``-1`` padding drops.
"""

from __future__ import annotations

import math
from typing import Any

import faiss
import numpy as np

from index import factory as fx
from index.records import Hit
from index.view import View

_faiss: Any = faiss

Scored = tuple[np.ndarray, np.ndarray]  # (scores, ids), each (nq, k); missing entries: -inf and -1


def _empty(nq: int) -> Scored:
    return np.full((nq, 0), -np.inf, dtype=np.float32), np.full((nq, 0), -1, dtype=np.int64)


def _top(scores: np.ndarray, ids: np.ndarray, k: int) -> Scored:
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)


def _memo_selector(view: View, key: Any, make: Any) -> Any:
    """``make()`` returns ``(selector, [every selector it is made of])``: FAISS selectors hold raw pointers
    to the ones they combine, so the memo keeps the whole chain alive as long as the view."""
    if key not in view.memo:
        view.memo[key] = make()
    return view.memo[key][0]


def _not_removed(view: View) -> Any:
    def make() -> tuple[Any, list[Any]]:
        removed = faiss.IDSelectorBatch(view.deleted_base_ids())
        return _faiss.IDSelectorNot(removed), [removed]

    return _memo_selector(view, "sel_live", make)


def _label_selector(view: View, label: str) -> Any:
    def make() -> tuple[Any, list[Any]]:
        _, sel = view.base.label_ids(label)
        out, into = view.base_changes(label)
        parts = [sel]
        if sel is not None and out:
            excluded = faiss.IDSelectorBatch(np.asarray(out, dtype=np.int64))
            not_excluded = _faiss.IDSelectorNot(excluded)
            sel = _faiss.IDSelectorAnd(sel, not_excluded)
            parts += [excluded, not_excluded, sel]
        if into:
            added = faiss.IDSelectorBatch(np.asarray(into, dtype=np.int64))
            sel = added if sel is None else _faiss.IDSelectorOr(sel, added)
            parts += [added, sel]
        return sel, parts

    return _memo_selector(view, ("sel_label", label), make)


def _live_label_ids(view: View, label: str) -> np.ndarray:
    ids, _ = view.base.label_ids(label)
    out, into = view.base_changes(label)
    return np.union1d(np.setdiff1d(ids, np.asarray(out, dtype=np.int64)), np.asarray(into, dtype=np.int64))


def _faiss_search(view: View, x: np.ndarray, k: int, selector: Any | None) -> Scored:
    index = view.base.index
    scores, ids = index.search(x, min(k, index.ntotal), params=fx.search_params(index, view.search_params, selector))
    return scores, ids


RERANK_K_FACTOR = 10.0  # candidates per result re-ranked from disk (bench_gallery: recall@10 0.97 at 10)


def _search_base(view: View, x: np.ndarray, k: int, label: str | None) -> Scored:
    rerank = view.base.rerank
    if rerank is None or view.base.index.ntotal == 0:
        return _search_index(view, x, k, label)
    factor = view.search_params.get("rerank", RERANK_K_FACTOR)
    _, ids = _search_index(view, x, max(k, int(k * factor)), label)
    exact = np.where(ids >= 0, rerank.scores(x, ids), -np.inf)  # the PQ scores only chose the candidates
    return _top(exact.astype(np.float32), ids, k)


def _search_index(view: View, x: np.ndarray, k: int, label: str | None) -> Scored:
    index, base = view.base.index, view.base
    if index.ntotal == 0:
        return _empty(len(x))
    if label is None:
        removed = view.deleted_base_ids()
        if not len(removed):
            return _faiss_search(view, x, k, None)
        if base.exact_selector:
            return _faiss_search(view, x, k, _not_removed(view))
        # Over-fetch by the number removed (bounded by the compaction threshold), then drop them.
        scores, ids = _faiss_search(view, x, k + len(removed), None)
        gone = np.isin(ids, removed)
        return _top(np.where(gone, -np.inf, scores), np.where(gone, -1, ids), k)
    if base.exact_selector:
        sel = _label_selector(view, label)
        return _empty(len(x)) if sel is None else _faiss_search(view, x, k, sel)
    subset = _live_label_ids(view, label)  # brute force over the label's stored vectors
    if not len(subset):
        return _empty(len(x))
    vectors = index.reconstruct_batch(subset)
    return _top(x @ vectors.T, np.broadcast_to(subset, (len(x), len(subset))), k)


def _search_deltas(view: View, x: np.ndarray, k: int, label: str | None) -> list[Scored]:
    found = []
    for dv, rows in zip(view.deltas, view.delta_rows(label), strict=True):
        if len(rows):
            scores = x @ dv.vectors[rows].T
            found.append(_top(scores, np.broadcast_to(dv.ids[rows], scores.shape), k))
    return found


def run_search(view: View, x: np.ndarray, k: int, label: str | None) -> list[list[Hit]]:
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}.")
    if len(x) == 0:
        return []
    parts = [_search_base(view, x, k, label), *_search_deltas(view, x, k, label)]
    scores, ids = _top(np.hstack([p[0] for p in parts]), np.hstack([p[1] for p in parts]), k)
    records = view.get_many(sorted({int(i) for i in ids.ravel() if i >= 0}))
    results: list[list[Hit]] = []
    for row_scores, row_ids in zip(scores.tolist(), ids.tolist(), strict=True):
        hits = []
        for score, id_ in zip(row_scores, row_ids, strict=True):
            record = records.get(id_)  # -1 padding (k > matches) is never a key; meta[-1] would be wrong
            if id_ < 0 or record is None or not math.isfinite(score):
                continue
            sim = max(-1.0, min(1.0, score))
            hits.append(Hit(id_, math.sqrt(max(0.0, 2.0 - 2.0 * sim)), sim, record.label, record.path))
        results.append(hits)
    return results
