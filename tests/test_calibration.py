"""Platt scaling, the Brier score and the calibration error against hand-computed values, and the class folds
of cross-class calibration."""

from __future__ import annotations

import numpy as np
import pytest

from model.evaluation.calibration import brier_score, expected_calibration_error, fit_platt, probability_metrics
from model.training.calibrate import class_folds


def test_platt_recovers_the_sigmoid_the_pairs_were_drawn_from() -> None:
    rng = np.random.default_rng(0)
    d = rng.uniform(0, 2, size=40_000)
    same = rng.random(len(d)) < 1 / (1 + np.exp(-(5.0 - 4.0 * d)))
    a, b = fit_platt(d, same)
    assert a == pytest.approx(5.0, abs=0.15) and b == pytest.approx(-4.0, abs=0.15)
    with pytest.raises(ValueError, match="both kinds"):
        fit_platt(d[:10], np.ones(10))


def test_brier_and_calibration_error_by_hand() -> None:
    p = np.array([0.1, 0.1, 0.9, 0.9, 0.55])
    y = np.array([0, 1, 1, 1, 0])
    assert brier_score(p, y) == pytest.approx((0.01 + 0.81 + 0.01 + 0.01 + 0.3025) / 5)
    # bins [0.1, 0.2): mean p 0.1 vs 1/2 same; [0.5, 0.6): 0.55 vs 0; [0.9, 1]: 0.9 vs 1
    assert expected_calibration_error(p, y) == pytest.approx(0.4 * 2 / 5 + 0.55 / 5 + 0.1 * 2 / 5)
    assert expected_calibration_error(np.array([0.0, 1.0]), np.array([0, 1])) == 0.0
    got = probability_metrics(np.array([0.0, 2.0]), np.array([1, 0]), (0.0, -50.0))
    assert got["brier"] == pytest.approx(0.125) and got["ece"] == pytest.approx(0.25)  # d=0 -> 0.5, d=2 -> ~0


def test_class_folds_partition_the_classes_two_or_more_each() -> None:
    classes = [f"c{k}" for k in range(10)]
    folds = class_folds(classes, 3, seed=0)
    assert [len(f) for f in folds] == [4, 3, 3]
    assert sorted(c for f in folds for c in f) == classes
    assert folds == class_folds(list(reversed(classes)), 3, seed=0)  # seeded, whatever the input order
    assert folds != class_folds(classes, 3, seed=1)
    assert [len(f) for f in class_folds(classes[:4], 3)] == [2, 2]  # never a fold of one class
    assert class_folds(classes[:3], 3) == []  # too few classes: the closed fallback
