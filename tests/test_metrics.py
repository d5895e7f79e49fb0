from __future__ import annotations

import itertools

import numpy as np
import pytest

from model.evaluation.metrics import calibrate_threshold, retrieval_metrics, sample_pairs, verification_metrics


def unit(rows: list[list[float]]) -> np.ndarray:
    a = np.asarray(rows, dtype=np.float32)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def test_retrieval_metrics_on_a_hand_worked_example() -> None:
    # Angles 0, 10, 100, 110 degrees: a,b are class x and c,d class y; all nearest neighbours agree.
    angles = np.radians([0, 10, 100, 110])
    emb = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    m = retrieval_metrics(emb, ["x", "x", "y", "y"], ks=(1, 2))
    assert m["recall_at_1"] == 1.0 and m["precision_at_1"] == 1.0 and m["map_at_r"] == 1.0


def test_map_at_r_counts_rank_within_r() -> None:
    # Query 0 (class a, R = 2): ranking b-class first, then both a's -> AP@R = (0 + 1/2) / 2 = 0.25.
    angles = np.radians([0, 30, 31, 5])
    emb = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    labels = ["a", "a", "a", "b"]
    m = retrieval_metrics(emb, labels, ks=(1,), queries=[0])
    assert m["recall_at_1"] == 0.0
    assert m["map_at_r"] == pytest.approx(0.25)


def test_roc_auc_equals_the_pairwise_ranking_probability() -> None:
    rng = np.random.default_rng(0)
    d = np.round(rng.random(60), 1)  # ties included
    y = rng.integers(0, 2, 60)
    same, diff = d[y == 0], d[y == 1]
    expected = np.mean([1.0 if s < t else 0.5 if s == t else 0.0 for s, t in itertools.product(same, diff)])
    assert verification_metrics(d, y)["roc_auc"] == pytest.approx(expected)


def test_threshold_separates_separable_pairs() -> None:
    d = np.array([0.1, 0.2, 0.3, 0.8, 0.9])
    y = np.array([0, 0, 0, 1, 1])
    t = calibrate_threshold(d, y)
    assert 0.3 < t < 0.8
    m = verification_metrics(d, y, threshold=t)
    assert m["accuracy"] == 1.0 and m["eer"] == 0.0


def test_sample_pairs_are_balanced_and_labelled() -> None:
    labels = ["a"] * 5 + ["b"] * 5 + ["c"] * 5
    i, j, y = sample_pairs(labels, 200, seed=1)
    lab = np.asarray(labels)
    assert (y == 0).sum() == (y == 1).sum() == 100
    assert np.all((lab[i] != lab[j]) == (y == 1))
    assert np.all(i[y == 0] != j[y == 0])
