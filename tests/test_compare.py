from __future__ import annotations

import numpy as np
import pytest

from model.core.checkpoint import Checkpoint
from model.core.network import SiameseNetwork
from model.inference.compare import Comparison, compare, same_probability


@pytest.fixture
def ckpt(tiny_model: SiameseNetwork) -> Checkpoint:
    return Checkpoint(tiny_model, threshold=1.0)


def test_orthogonal_and_identical_unit_vectors(ckpt: Checkpoint) -> None:
    e = np.eye(3, dtype=np.float32)
    apart = compare(e[0], e[1], ckpt)
    assert apart == Comparison(
        dissimilarity=pytest.approx(np.sqrt(2)), similarity=0.0, same=False, threshold=1.0, same_probability=None
    )
    alike = compare(e[2], e[2], ckpt)
    assert (alike.dissimilarity, alike.similarity, alike.same) == (0.0, 1.0, True)


def test_the_verdict_is_strictly_below_the_checkpoints_threshold(ckpt: Checkpoint) -> None:
    a, b = np.array([0.0, 0.0]), np.array([0.6, 0.8])  # distance exactly 1.0 in float64
    assert compare(a, b, ckpt).dissimilarity == 1.0 and not compare(a, b, ckpt).same
    ckpt.threshold = 1.0000001
    assert compare(a, b, ckpt).same and compare(a, b, ckpt).threshold == 1.0000001


def test_float32_embeddings_are_compared_in_float64_and_the_cosine_is_clipped(ckpt: Checkpoint) -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=256).astype(np.float32)
    a /= np.linalg.norm(a)
    b = (a + 1e-4 * rng.normal(size=256)).astype(np.float32)
    got = compare(a, b, ckpt)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    assert got.dissimilarity == float(np.linalg.norm(a64 - b64))
    assert got.similarity == pytest.approx(a64 @ b64 / (np.linalg.norm(a64) * np.linalg.norm(b64)), abs=1e-15)
    # A vector with itself can come out a rounding error above 1 before clipping: never after.
    scaled = np.full(7, 1 / 3, dtype=np.float32)
    assert -1.0 <= compare(scaled, scaled, ckpt).similarity <= 1.0
    assert compare(scaled, -scaled, ckpt).similarity == -1.0


def test_the_cosine_does_not_assume_unit_length(ckpt: Checkpoint) -> None:
    got = compare(np.array([3.0, 0.0]), np.array([1.0, 1.0]), ckpt)
    assert got.similarity == pytest.approx(np.sqrt(0.5)) and got.dissimilarity == pytest.approx(np.sqrt(5))
    assert compare(np.zeros(2), np.zeros(2), ckpt).similarity == 0.0  # no division by zero


def test_mismatched_embeddings_are_refused(ckpt: Checkpoint) -> None:
    with pytest.raises(ValueError, match="shapes"):
        compare(np.zeros(4), np.zeros(5), ckpt)
    with pytest.raises(ValueError, match="shapes"):
        compare(np.zeros((2, 4)), np.zeros((2, 4)), ckpt)


def test_to_dict_holds_every_field(ckpt: Checkpoint) -> None:
    e = np.eye(2)
    assert compare(e[0], e[1], ckpt).to_dict() == {
        "dissimilarity": pytest.approx(np.sqrt(2)),
        "similarity": 0.0,
        "same": False,
        "threshold": 1.0,
        "same_probability": None,  # a checkpoint without Platt coefficients (trained before they existed)
    }


def test_same_probability_is_the_checkpoints_platt_sigmoid_of_the_distance(ckpt: Checkpoint) -> None:
    ckpt.threshold, ckpt.platt = 1.0, (6.0, -6.0)  # one half at distance 1
    a = np.array([1.0, 0.0])
    probabilities = []
    for angle in np.linspace(0, np.pi, 7):
        got = compare(a, np.array([np.cos(angle), np.sin(angle)]), ckpt)
        assert got.same_probability == pytest.approx(1 / (1 + np.exp(-(6 - 6 * got.dissimilarity))), rel=1e-12)
        probabilities.append(got.same_probability)
    assert probabilities == sorted(probabilities, reverse=True) and probabilities[0] > 0.99 > 0.01 > probabilities[-1]
    at_threshold = compare(np.array([0.0, 0.0]), np.array([0.6, 0.8]), ckpt)  # distance exactly 1
    assert at_threshold.same_probability == 0.5 and not at_threshold.same
    assert same_probability(np.array([1e6, -1e6]), (0.0, 1.0)).tolist() == [1.0, 0.0]  # no overflow
