"""Retrieval and verification metrics on L2-normalised embeddings, computed exactly in numpy.

Definitions follow pytorch-metric-learning's AccuracyCalculator: leave-one-out retrieval, where each image
queries all the others; MAP@R with R the number of other images of the query's class.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _ranked_matches(
    embeddings: np.ndarray, labels: np.ndarray, depth: int, queries: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """For each query row: whether each of its ``depth`` nearest others shares its label, and its R."""
    matches = np.zeros((len(queries), depth), dtype=bool)
    for start in range(0, len(queries), 1024):  # chunks bound the similarity matrix's memory
        rows = queries[start : start + 1024]
        sims = embeddings[rows] @ embeddings.T
        sims[np.arange(len(rows)), rows] = -np.inf  # a query never retrieves itself
        order = np.argsort(-sims, axis=1, kind="stable")[:, :depth]
        matches[start : start + 1024] = labels[order] == labels[rows, None]
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    return matches, (counts[inverse] - 1)[queries]


def retrieval_metrics(
    embeddings: np.ndarray,
    labels: Sequence[str],
    ks: Sequence[int] = (1, 5, 10),
    queries: Sequence[int] | np.ndarray | None = None,
) -> dict:
    """Recall@k (a same-class image among the top k), precision@1 and MAP@R, leave-one-out.

    By default every image queries all the others; ``queries`` restricts the queries to those rows (held-out
    images searched against everything else), the database staying whole.
    """
    labels_arr = np.asarray(labels)
    query_rows = np.arange(len(labels_arr)) if queries is None else np.asarray(queries, dtype=np.int64)
    r_max = int(np.unique(labels_arr, return_counts=True)[1].max()) - 1
    depth = max(max(ks), r_max, 1)
    depth = min(depth, len(labels_arr) - 1)
    matches, r = _ranked_matches(np.asarray(embeddings, dtype=np.float32), labels_arr, depth, query_rows)
    valid = r > 0  # a class of one image has nothing to retrieve
    out = {f"recall_at_{k}": float(matches[valid, :k].any(axis=1).mean()) for k in ks}
    out["precision_at_1"] = float(matches[valid, 0].mean())
    positions = np.arange(1, depth + 1)
    within_r = positions[None, :] <= r[:, None]
    precision_at_i = np.cumsum(matches, axis=1) / positions
    ap_at_r = (precision_at_i * matches * within_r).sum(axis=1) / np.maximum(r, 1)
    out["map_at_r"] = float(ap_at_r[valid].mean())
    return out


def roc_curve(distances: np.ndarray, dissimilar: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False- and true-positive rates where "positive" means "same" (distance below the threshold)."""
    order = np.argsort(distances, kind="stable")
    d, same = distances[order], ~dissimilar.astype(bool)[order]
    tp = np.cumsum(same)
    fp = np.cumsum(~same)
    last_of_ties = np.r_[np.diff(d) > 0, True]
    tpr = np.r_[0.0, tp[last_of_ties] / max(same.sum(), 1)]
    fpr = np.r_[0.0, fp[last_of_ties] / max((~same).sum(), 1)]
    return fpr, tpr, np.r_[-np.inf, d[last_of_ties]]


def verification_metrics(
    distances: np.ndarray, dissimilar: np.ndarray, threshold: float | None = None
) -> dict:
    """ROC-AUC and equal error rate of "same if distance < t"; accuracy at ``threshold`` when given."""
    fpr, tpr, _ = roc_curve(distances, dissimilar)
    out = {"roc_auc": float(np.trapezoid(tpr, fpr))}
    fnr = 1 - tpr
    k = int(np.argmin(np.abs(fnr - fpr)))
    out["eer"] = float((fnr[k] + fpr[k]) / 2)
    if threshold is not None:
        predicted_dissimilar = distances >= threshold
        out["accuracy"] = float((predicted_dissimilar == dissimilar.astype(bool)).mean())
    return out


def calibrate_threshold(distances: np.ndarray, dissimilar: np.ndarray) -> float:
    """The distance threshold with the best balanced accuracy (mean of TPR and TNR) on these pairs."""
    fpr, tpr, thresholds = roc_curve(distances, dissimilar)
    best = int(np.argmax(tpr - fpr))
    d = np.sort(distances)
    # Place the threshold midway between the last "same" distance accepted and the next distance.
    upper = d[np.searchsorted(d, thresholds[best], side="right")] if best + 1 < len(thresholds) else d[-1]
    return float((thresholds[best] + upper) / 2) if np.isfinite(thresholds[best]) else float(d[0] / 2)


def sample_pairs(
    labels: Sequence[str], n_pairs: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Balanced random evaluation pairs: half same-class, half different-class, seeded."""
    rng = np.random.default_rng(seed)
    labels_arr = np.asarray(labels)
    by_class = {c: np.flatnonzero(labels_arr == c) for c in np.unique(labels_arr)}
    usable = [c for c, idx in by_class.items() if len(idx) >= 2]
    half = n_pairs // 2
    cls = rng.choice(usable, size=half)
    same = np.array([rng.choice(by_class[c], size=2, replace=False) for c in cls]).reshape(-1, 2)
    a = rng.integers(0, len(labels_arr), size=4 * half)
    b = rng.integers(0, len(labels_arr), size=4 * half)
    keep = labels_arr[a] != labels_arr[b]
    diff = np.stack([a[keep], b[keep]], axis=1)[:half]
    i = np.r_[same[:, 0], diff[:, 0]]
    j = np.r_[same[:, 1], diff[:, 1]]
    y = np.r_[np.zeros(len(same), dtype=np.int64), np.ones(len(diff), dtype=np.int64)]
    return i, j, y
