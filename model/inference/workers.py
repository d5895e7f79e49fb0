"""Files -> embeddings with several workers, each decoding a chunk and running a single-threaded model on it.

On a CPU, running one batch at a time with every core inside the model leaves the cores waiting at the
model's parallel barriers whenever a decoder thread takes one of them. Here each worker owns one core's worth
of work from file to embedding: decode a chunk, then run the model on it with one intra-op thread. With one
worker more than there are cores, a core that finishes a model call always finds a chunk to decode or run.
Measured on 2 cores (BENCHMARKS.md): end-to-end closer to forward-only than the decoder-threads-plus-one-
model design of :func:`model.inference.decode.iter_batches`, which stays the path for CUDA.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from model.core.device import cpu_count
from model.core.presets import EvalPreset
from model.inference.decode import decode_batch

CHUNK = 32  # images per model call: enough chunks for every worker, and no long tail at the end


def default_workers() -> int:
    """One worker per core plus one (at most 8): a core that finishes a model call finds work waiting."""
    return min(cpu_count() + 1, 8)


@dataclass
class EmbeddedChunk:
    embeddings: np.ndarray  # (len(ok), d) float32
    ok: list[int]  # indices into the whole input, one per row
    failures: dict[int, str] = field(default_factory=dict)  # index -> reason

    @property
    def size(self) -> int:
        return len(self.ok) + len(self.failures)


def embed_in_workers(
    paths: Sequence[Path],
    preset: EvalPreset,
    forward: Callable[[torch.Tensor], np.ndarray],
    workers: int,
    chunk: int = CHUNK,
) -> Iterator[EmbeddedChunk]:
    """Chunks of ``paths`` in input order, embedded by ``workers`` threads, at most two chunks per worker ahead.

    ``forward`` must be safe to call from several threads at once (an ONNX Runtime session is).
    """

    def job(start: int) -> EmbeddedChunk:
        batch = decode_batch(paths[start : start + chunk], start, preset)
        embeddings = forward(batch.images) if batch.ok else np.zeros((0, 0), dtype=np.float32)
        return EmbeddedChunk(embeddings, batch.ok, batch.failures)  # the decoded images are freed here

    starts = iter(range(0, len(paths), chunk))
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="embed") as pool:
        first = itertools.islice(starts, 2 * workers)
        pending: deque[Future[EmbeddedChunk]] = deque(pool.submit(job, s) for s in first)
        try:
            while pending:
                done = pending.popleft().result()
                next_start = next(starts, None)
                if next_start is not None:
                    pending.append(pool.submit(job, next_start))
                yield done
        finally:
            for future in pending:  # the consumer stopped early: drop what was not started
                future.cancel()
