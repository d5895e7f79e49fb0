"""The probability that two photos show the same class, from their distance: fitting it and judging it.

``same_probability = sigmoid(a + b · distance)`` (Platt scaling: a logistic regression on the one distance).
Two numbers to store, monotone in the distance and smooth; on the dogs' open splits it calibrated as well as
isotonic regression (a step function of many more numbers), BENCHMARKS.md. The Brier score and the expected
calibration error judge a probability against what the pairs really were.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit, log_expit

from model.inference.compare import same_probability


def fit_platt(distances: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    """``(a, b)`` maximising the likelihood of ``same`` (1 = same class) under ``sigmoid(a + b · distance)``."""
    d = np.asarray(distances, dtype=np.float64)
    y = np.asarray(same, dtype=np.float64)
    if len(d) == 0 or y.min() == y.max():
        raise ValueError("Platt scaling needs pairs of both kinds, same and different.")

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        z = w[0] + w[1] * d
        nll = -np.sum(y * log_expit(z) + (1 - y) * log_expit(-z))
        residual = expit(z) - y
        return float(nll), np.array([residual.sum(), (residual * d).sum()])

    result = minimize(loss, np.array([0.0, -1.0]), jac=True, method="BFGS")
    a, b = result.x
    return float(a), float(b)


def brier_score(probabilities: np.ndarray, same: np.ndarray) -> float:
    """Mean squared gap between the probability and the truth (1 same, 0 different): 0 is perfect, 0.25 a coin."""
    p, y = np.asarray(probabilities, dtype=np.float64), np.asarray(same, dtype=np.float64)
    return float(np.mean((p - y) ** 2))


def expected_calibration_error(probabilities: np.ndarray, same: np.ndarray, bins: int = 10) -> float:
    """How far "p" is from the share of same pairs among pairs given about p: over ``bins`` equal-width bins of
    the probability, the gap between mean probability and share of same pairs, weighted by the bin's size."""
    p, y = np.asarray(probabilities, dtype=np.float64), np.asarray(same, dtype=np.float64)
    which = np.minimum((p * bins).astype(int), bins - 1)
    error = 0.0
    for k in np.unique(which):
        members = which == k
        error += abs(p[members].mean() - y[members].mean()) * members.mean()
    return float(error)


def probability_metrics(distances: np.ndarray, same: np.ndarray, platt: tuple[float, float]) -> dict[str, float]:
    """Brier score and expected calibration error of ``platt``'s probabilities on these pairs."""
    p = same_probability(np.asarray(distances, dtype=np.float64), platt)
    return {"brier": brier_score(p, same), "ece": expected_calibration_error(p, same)}
