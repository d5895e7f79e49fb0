"""Re-ranking from disk: an 8-bit copy of every base vector, memory-mapped, for compressed (PQ) bases.

PQ codes small enough to keep 10M vectors in memory cannot order close neighbours (bench_gallery: IVF-PQ64
finds 0.50 of the true 10 nearest on its data, PQ128 0.77). This file keeps each vector in 8 bits per
dimension (``rerank.sq8``: 256 bytes at 256-d, 2.5 GB at 10M) on disk; a search takes ``k * k_factor``
candidates from the PQ index and orders them by their 8-bit vectors (0.97 of the true 10 at
``k_factor`` 10). Only the candidates' rows are read, one ``pread`` each (about a microsecond from the page
cache): the file is not mapped, so what the kernel caches of it is reclaimable page cache, not memory of the
process (a mapping's fault-around made a 1M gallery's 200 searches map the whole file). The same design as
DiskANN's (PQ in memory, full vectors on disk for re-ranking).

Layout: ``IMGSRR01``, ``u32 dim``, ``u64 rows``, ``float32 low[dim]``, ``float32 step[dim]``, then one row
of ``dim`` bytes per id (row = id; rows of removed or never-added ids are unused). A vector is coded per
dimension as ``round((x - low) / step)`` clipped to 0..255, with ``low`` and ``step`` from the training
sample. A compaction copies the file and writes the new rows (the old base keeps its own copy untouched).
"""

from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path

import numpy as np

RERANK_FILE = "rerank.sq8"
_MAGIC = b"IMGSRR01"
_HEAD = struct.Struct("<8sIQ")


class Rerank:
    """A base's 8-bit vectors, read row by row. The file stays open as long as this object (a version still
    being read after compaction deleted its snapshot keeps working)."""

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_RDONLY)
        head = os.pread(self._fd, _HEAD.size, 0)
        magic, dim, rows = _HEAD.unpack(head)
        if magic != _MAGIC:
            os.close(self._fd)
            raise ValueError(f"{path} is not a re-ranking file")
        ranges = np.frombuffer(os.pread(self._fd, 8 * dim, _HEAD.size), dtype="<f4")
        self.low, self.step = ranges[:dim].copy(), ranges[dim:].copy()
        self.path, self.dim, self.rows = path, dim, rows
        self._start = _HEAD.size + 8 * dim

    def __del__(self) -> None:
        if getattr(self, "_fd", -1) >= 0:
            os.close(self._fd)

    def scores(self, queries: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Inner products of each query (nq, dim) with the 8-bit vectors of its candidates ids (nq, m)."""
        rows = np.clip(ids, 0, max(0, self.rows - 1)).ravel().tolist()
        data = b"".join(os.pread(self._fd, self.dim, self._start + r * self.dim) for r in rows)
        vectors = np.frombuffer(data, dtype=np.uint8).astype(np.float32).reshape(*ids.shape, self.dim)
        return np.einsum("qd,qmd->qm", queries, vectors * self.step + self.low)


def fit(sample: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``low`` and ``step`` of the 8-bit code per dimension: the sample's range with half of it again as a
    margin on each side (vectors added later are coded with the same range), within [-1, 1] (unit vectors)."""
    lo, hi = sample.min(axis=0), sample.max(axis=0)
    margin = (hi - lo) / 2
    low = np.maximum(lo - margin, -1.0).astype(np.float32)
    step = np.maximum((np.minimum(hi + margin, 1.0) - low) / 255, 1e-12).astype(np.float32)
    return low, step


def encode(x: np.ndarray, low: np.ndarray, step: np.ndarray) -> np.ndarray:
    return np.clip(np.rint((x - low) / step), 0, 255).astype(np.uint8)


class Writer:
    """A new file, filled a chunk of rows at a time (``add(first id, vectors)``), then ``close(rows)``."""

    def __init__(self, path: Path, low: np.ndarray, step: np.ndarray) -> None:
        self.low, self.step = low, step
        self._file = open(path, "wb")  # noqa: SIM115 (closed by close())
        self._file.write(_HEAD.pack(_MAGIC, len(low), 0) + low.astype("<f4").tobytes() + step.astype("<f4").tobytes())

    def add(self, start: int, x: np.ndarray) -> None:
        self._file.seek(_HEAD.size + 8 * len(self.low) + start * len(self.low))
        self._file.write(encode(x, self.low, self.step).tobytes())

    def close(self, rows: int) -> None:
        self._file.truncate(_HEAD.size + 8 * len(self.low) + rows * len(self.low))
        self._file.seek(0)
        self._file.write(_HEAD.pack(_MAGIC, len(self.low), rows))
        self._file.close()


def write_new(path: Path, sample: np.ndarray, ids: np.ndarray, vectors: np.ndarray, rows: int) -> None:
    """A first file (the range fitted to ``sample``), holding ``vectors`` at the rows of ``ids``."""
    writer = Writer(path, *fit(sample))
    for item_id, x in zip(ids.tolist(), vectors, strict=True):
        writer.add(item_id, x[None, :])
    writer.close(rows)


def write_next(previous: Path, path: Path, ids: np.ndarray, vectors: np.ndarray, rows: int) -> None:
    """The previous file, grown to ``rows`` rows, with the rows of ``ids`` set to ``vectors``."""
    shutil.copyfile(previous, path)
    old = Rerank(previous)
    start = _HEAD.size + 8 * old.dim
    codes = encode(vectors, old.low, old.step)
    fd = os.open(path, os.O_RDWR)
    try:
        os.ftruncate(fd, start + rows * old.dim)
        os.pwrite(fd, _HEAD.pack(_MAGIC, old.dim, rows), 0)
        for item_id, row in zip(ids.tolist(), codes, strict=True):
            os.pwrite(fd, row.tobytes(), start + item_id * old.dim)
    finally:
        os.close(fd)
