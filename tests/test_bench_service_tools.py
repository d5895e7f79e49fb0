"""The service benchmark's helpers: the model-skipped server's stand-in forward pass and the ratio ceiling."""

from __future__ import annotations

import numpy as np
import pytest

from bench.bench_service import ratio_ceiling
from bench.model_skipped import skip_forward


def test_skipped_forward_runs_the_model_once_then_repeats_its_row() -> None:
    seen: list[int] = []

    def forward(engine: object, batch: np.ndarray) -> np.ndarray:
        seen.append(len(batch))
        return np.arange(len(batch) * 3, dtype=np.float32).reshape(len(batch), 3) + 1

    skipped = skip_forward(forward)
    first = skipped(None, np.zeros((4, 2)))
    second = skipped(None, np.zeros((2, 2)))
    assert seen == [1]  # the real forward pass ran on one image, once
    assert first.shape == (4, 3) and second.shape == (2, 3)
    assert (first == [1, 2, 3]).all() and (second == [1, 2, 3]).all()


def test_ratio_ceiling_counts_the_model_and_the_rest_per_request() -> None:
    # 200 images/s on 2 cores is 10 CPU ms per image; 2.5 ms more per request leaves at most 10 / 12.5.
    assert ratio_ceiling(200, 2, 2.5) == pytest.approx(0.8)
    assert ratio_ceiling(200, 2, 0.0) == pytest.approx(1.0)
    assert ratio_ceiling(100, 1, 10.0) == pytest.approx(0.5)
