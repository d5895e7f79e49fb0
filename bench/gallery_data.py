"""Synthetic gallery vectors for bench_gallery: clusters with low-dimensional structure, made in seeded chunks.

Each vector is ``normalise(centre_c + 0.5 * B_c z + 0.05 * noise)``: one of 1,000 cluster centres, a point of
that cluster's own random 16-dimensional subspace (``z`` standard normal, ``B_c`` scaled so the offset has
norm ~0.5), and a little isotropic noise. Image embeddings behave like this: classes, and within a class a
few directions of variation (pose, colour, background: deep representations have intrinsic dimensions of
tens, not hundreds), so near neighbours are meaningfully near. An isotropic Gaussian blob per cluster (what
bench_index uses) has no such structure: inside a cluster every point is about as far as every other, and
no compressed code can tell its true 10 nearest apart (bench_gallery reports that case too).

Chunk ``i`` of a gallery depends only on (seed, i), so 10M vectors are made a chunk at a time, never all at once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import numpy as np

DIM, CLUSTERS, RANK = 256, 1000, 16
CHUNK = 100_000
_rng = np.random.default_rng(12345)
_CENTRES = _rng.standard_normal((CLUSTERS, DIM)).astype(np.float32)
_CENTRES /= np.linalg.norm(_CENTRES, axis=1, keepdims=True)
_BASES = (_rng.standard_normal((CLUSTERS, RANK, DIM)) / np.sqrt(RANK * DIM)).astype(np.float32)


def vectors(n: int, seed: int, start: int = 0, isotropic: bool = False) -> np.ndarray:
    """Rows ``start .. start + n`` of the stream ``seed`` (made chunk by chunk: cheap to restart anywhere)."""
    out = np.empty((n, DIM), dtype=np.float32)
    done = 0
    while done < n:
        chunk, offset = divmod(start + done, CHUNK)
        block = _chunk(seed, chunk, isotropic)
        take = min(n - done, CHUNK - offset)
        out[done : done + take] = block[offset : offset + take]
        done += take
    return out


def _chunk(seed: int, chunk: int, isotropic: bool) -> np.ndarray:
    rng = np.random.default_rng([seed, chunk])
    cluster = rng.integers(0, CLUSTERS, CHUNK)
    if isotropic:  # bench_index's mixture: noise of norm 0.6 around the centre
        x = _CENTRES[cluster] + 0.6 * rng.standard_normal((CHUNK, DIM), dtype=np.float32) / np.sqrt(DIM)
    else:
        z = rng.standard_normal((CHUNK, RANK), dtype=np.float32)
        x = _CENTRES[cluster] + 0.05 * rng.standard_normal((CHUNK, DIM), dtype=np.float32) / np.sqrt(DIM)
        order = np.argsort(cluster, kind="stable")
        bounds = np.searchsorted(cluster[order], np.arange(CLUSTERS + 1))
        for c in range(CLUSTERS):  # one small product per cluster: never a (chunk, rank, dim) temporary
            rows = order[bounds[c] : bounds[c + 1]]
            x[rows] += 0.5 * (z[rows] @ _BASES[c])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def chunks(n: int, seed: int, size: int = CHUNK, isotropic: bool = False) -> Iterator[tuple[int, np.ndarray]]:
    for start in range(0, n, size):
        yield start, vectors(min(size, n - start), seed, start, isotropic)


def sha(i: int, salt: str = "") -> str:
    return hashlib.sha256(f"{salt}{i}".encode()).hexdigest()
