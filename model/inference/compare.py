"""The verdict on two embeddings: what ``POST /v1/compare`` and ``imgsim compare`` both answer.

One function, so that the service and the command line can never disagree: distances and cosines in
float64 (embeddings arrive as float32), the cosine divided by both norms and clipped to [-1, 1], ``same``
when the Euclidean distance is below the checkpoint's threshold, and ``same_probability`` from its Platt
coefficients. Both were calibrated at training time on classes held out from training
(:mod:`model.training.calibrate`), so that they hold for classes the model never saw.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from model.core.checkpoint import Checkpoint


@dataclass(frozen=True)
class Comparison:
    """The answer; a new field here (and in the API's ``CompareResponse``) reaches both callers."""

    dissimilarity: float  # Euclidean distance between the embeddings, in [0, 2] for unit vectors
    similarity: float  # cosine similarity, in [-1, 1]
    same: bool  # dissimilarity < threshold
    threshold: float  # the checkpoint's calibrated same/different distance
    same_probability: float | None  # calibrated P(same class | dissimilarity); None: the checkpoint predates it

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare(a: np.ndarray, b: np.ndarray, checkpoint: Checkpoint) -> Comparison:
    """Two embeddings of ``checkpoint``'s model -> distance, cosine and verdict at its threshold."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"compare takes two embeddings of one dimension, got shapes {a.shape} and {b.shape}.")
    distance = float(np.linalg.norm(a - b))
    norms = float(np.linalg.norm(a) * np.linalg.norm(b))
    cosine = float(np.clip(a @ b / max(norms, 1e-12), -1.0, 1.0))
    threshold = float(checkpoint.threshold)
    probability = None if checkpoint.platt is None else float(same_probability(np.array(distance), checkpoint.platt))
    return Comparison(
        dissimilarity=distance,
        similarity=cosine,
        same=distance < threshold,
        threshold=threshold,
        same_probability=probability,
    )


def same_probability(distance: np.ndarray, platt: tuple[float, float]) -> np.ndarray:
    """Platt scaling: ``sigmoid(a + b · distance)``, computed without overflow for any distance."""
    a, b = platt
    return np.asarray(0.5 * (1.0 + np.tanh(0.5 * (a + b * np.asarray(distance, dtype=np.float64)))))
