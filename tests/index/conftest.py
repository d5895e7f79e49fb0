"""Synthetic vectors and small indexes for the index tests."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from index import CompactionPolicy, GalleryIndex, NewItem

MANUAL = CompactionPolicy(background=False)  # tests compact when they say so


def clustered(n: int, dim: int, seed: int = 0, clusters: int = 20, spread: float = 0.35) -> np.ndarray:
    """Unit vectors from a Gaussian mixture: realistic for embeddings, unlike uniform noise."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    noise = rng.standard_normal((n, dim)).astype(np.float32) / np.sqrt(dim)  # norm ~ 1
    x = centres[rng.integers(0, clusters, n)] + spread * noise
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def new_items(n: int, start: int = 0, label: str | None = None) -> list[NewItem]:
    """Items with distinct contents; labels cycle over three classes unless ``label`` is given."""
    return [
        NewItem(
            f"cls{i % 3}/img{i}.png",
            label or f"cls{i % 3}",
            hashlib.sha256(str(i).encode()).hexdigest(),
            8,
            6,
        )
        for i in range(start, start + n)
    ]


def brute_force(gallery: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k ids by cosine, computed with numpy (the ground truth)."""
    scores = queries @ gallery.T
    return ids[np.argsort(-scores, axis=1, kind="stable")[:, :k]]


@pytest.fixture
def make_index(tmp_path: Path):  # type: ignore[no-untyped-def]
    """``make(n, dim, factory)``: a gallery of ``n`` clustered vectors (all in the log: not compacted)."""
    def make(
        n: int = 200,
        dim: int = 16,
        factory: str | None = None,
        name: str = "idx",
        policy: CompactionPolicy = MANUAL,
    ) -> tuple[GalleryIndex, np.ndarray]:
        gi = GalleryIndex.create(
            tmp_path / name,
            model_hash="m" * 64,
            backbone="seed-cnn",
            dim=dim,
            gallery_root=tmp_path / "gallery",
            factory=factory,
            policy=policy,
        )
        made.append(gi)
        x = clustered(n, dim)
        if n:
            gi.add(x, new_items(n))
        return gi, x

    made: list[GalleryIndex] = []
    yield make
    for gi in made:  # release the writer locks (and wait for background compactions)
        gi.close()
