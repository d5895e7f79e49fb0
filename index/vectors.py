"""The one check every backend applies to incoming vectors (queries and additions)."""

from __future__ import annotations

import numpy as np


def check_vectors(vectors: np.ndarray, dim: int) -> np.ndarray:
    """``vectors`` as a C-contiguous float32 (n, dim) array of unit rows; ValueError for a wrong shape, NaN,
    infinity or a zero row."""
    x = np.asarray(vectors, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"Expected vectors of shape (n, {dim}), got {x.shape}.")
    if not np.isfinite(x).all():
        raise ValueError("Vectors contain NaN or infinity.")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if (norms == 0).any():
        raise ValueError("Vectors must not be zero.")
    return np.ascontiguousarray(x / norms)  # callers pass unit vectors; this guards the cosine maths
