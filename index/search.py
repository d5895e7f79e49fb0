"""Search one published version: FAISS ids to hits, ``-1`` padding dropped, optional label filter."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import faiss
import numpy as np

from index import factory as fx
from index.records import Hit

if TYPE_CHECKING:
    from index.gallery import State


def _exact_subset(state: State, x: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute force over the stored vectors of ``ids`` (label filter without a faithful selector)."""
    vectors = np.vstack([state.index.reconstruct(int(i)) for i in ids])
    scores = x @ vectors.T
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, top, axis=1), ids[top]


def run_search(state: State, x: np.ndarray, k: int, label: str | None) -> list[list[Hit]]:
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}.")
    index = state.index
    if index.ntotal == 0 or len(x) == 0:
        return [[] for _ in range(len(x))]
    if label is None:
        scores, ids = index.search(x, min(k, index.ntotal))
    else:
        subset = state.label_ids(label)
        if len(subset) == 0:
            return [[] for _ in range(len(x))]
        kk = min(k, len(subset))
        if fx.selector_is_exact(index):
            params = fx.search_params(index, fx.current_search_params(index), faiss.IDSelectorBatch(subset))
            scores, ids = index.search(x, kk, params=params)
        else:
            scores, ids = _exact_subset(state, x, subset, kk)
    records = state.records
    results: list[list[Hit]] = []
    for row_scores, row_ids in zip(scores, ids, strict=True):
        hits = []
        for score, id_ in zip(row_scores.tolist(), row_ids.tolist(), strict=True):
            record = records.get(id_)  # -1 padding (k > matches) is never a key; meta[-1] would be wrong
            if id_ < 0 or record is None:
                continue
            sim = max(-1.0, min(1.0, score))
            hits.append(Hit(id_, math.sqrt(max(0.0, 2.0 - 2.0 * sim)), sim, record.label, record.path))
        results.append(hits)
    return results
