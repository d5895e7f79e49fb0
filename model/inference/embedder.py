"""Batch embedding of images and files with a trained checkpoint: what the index and the service call.

``Embedder`` owns the checkpoint, an inference engine (see :mod:`model.inference.engines`: ONNX Runtime on CPU,
fp16 PyTorch on CUDA, eager PyTorch as the reference) and the eval transform. ``embed_files`` decodes in a
thread pool a few batches ahead of the forward pass (on the GPU for JPEGs when running on CUDA), so
end-to-end speed approaches forward-only speed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from model.core.checkpoint import Checkpoint, load_checkpoint
from model.core.device import cpu_count, resolve_device
from model.core.presets import EvalPreset
from model.inference.decode import iter_batches
from model.inference.engines import Engine, OnnxEngine, build_engine
from model.inference.workers import CHUNK, EmbeddedChunk, default_workers, embed_in_workers

log = logging.getLogger(__name__)


@dataclass
class EmbedResult:
    embeddings: np.ndarray  # (n_ok, d) float32, rows in the order of ``ok``
    ok: list[int]  # indices into the input paths that were embedded
    failures: dict[int, str] = field(default_factory=dict)  # index -> reason, for unreadable files


class Embedder:
    """``Embedder(ckpt, device="auto", engine="auto")``; extra keyword options go to the engine.

    Engine options: ``torch``: ``precision`` (auto|fp32|fp16|bf16; auto is fp16 on CUDA, fp32 on CPU),
    ``channels_last`` (default on CUDA), ``compile`` (torch.compile). ``onnx``: ``threads`` (ORT intra-op
    threads, default all cores), ``spin`` (ORT spin-waiting, default off), ``cache_dir``.
    ``gpu_decode`` (default True): decode JPEGs on the GPU when the device is CUDA.
    """

    def __init__(
        self,
        checkpoint: Checkpoint | str | Path,
        device: str = "auto",
        engine: str = "auto",
        gpu_decode: bool = True,
        **engine_options: object,
    ) -> None:
        self.checkpoint = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
        self.device = resolve_device(device)
        self.model = self.checkpoint.model.eval()
        self.preset = EvalPreset(self.checkpoint.config.image_size)
        self.engine: Engine = build_engine(self.checkpoint, self.device, engine, **engine_options)
        self.gpu_decode = gpu_decode and self.device.type == "cuda"
        log.info("embedding with engine %s on %s", self.engine.name, self.device)

    @property
    def dim(self) -> int:
        return self.checkpoint.config.embedding_dim

    @property
    def engine_name(self) -> str:
        return self.engine.name

    def embed_tensors(self, batch: torch.Tensor) -> np.ndarray:
        """Transformed images (n, 3, h, w) -> unit-length embeddings (n, d) float32."""
        if len(batch) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.engine(batch)

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.embed_tensors(torch.stack([self.preset(im) for im in images]))

    def embed_files(
        self,
        paths: Sequence[str | Path],
        batch_size: int = 64,
        num_workers: int | None = None,
        progress: bool = True,
    ) -> EmbedResult:
        """Embed files with decoding overlapping the model; unreadable files are reported, not raised.

        With ONNX Runtime (the CPU default), ``num_workers`` threads (default: one per core plus one, at most 8)
        each decode a chunk and run the model on it; otherwise ``num_workers`` decoder threads (default: one
        per core, at most 8) work ahead of one model. 0 decodes inline.
        """
        files = [Path(p) for p in paths]
        chunks, ok, failures = [], [], {}
        with tqdm(total=len(files), desc="embedding", unit="img", disable=not progress) as bar:
            for part in self._embedded_chunks(files, batch_size, num_workers):
                failures.update(part.failures)
                if part.ok:
                    chunks.append(part.embeddings)
                    ok.extend(part.ok)
                bar.update(part.size)
        for i, err in sorted(failures.items()):
            log.warning("skipped %s: %s", files[i], err)
        embeddings = np.concatenate(chunks) if chunks else np.zeros((0, self.dim), dtype=np.float32)
        return EmbedResult(embeddings, ok, failures)

    def _embedded_chunks(self, files: list[Path], batch_size: int, workers: int | None) -> Iterator[EmbeddedChunk]:
        if isinstance(self.engine, OnnxEngine) and workers != 0:
            workers = default_workers() if workers is None else workers
            chunk = min(batch_size, CHUNK)
            yield from embed_in_workers(files, self.preset, self.engine.run_single_threaded, workers, chunk)
            return
        workers = min(cpu_count(), 8) if workers is None else workers
        decode = None
        if self.gpu_decode:
            from model.inference.gpu_decode import decode_batch_cuda

            decode = partial(decode_batch_cuda, device=self.device)
        # nvJPEG wants whole batches per call; on the CPU, chunks of 8 let every thread work on one batch.
        batches = iter_batches(
            files,
            self.preset,
            batch_size,
            workers,
            prefetch=max(2, workers),
            pin=self.device.type == "cuda",
            chunk=batch_size if decode is not None else 8,
            decode=decode,
        )
        for batch in batches:
            embeddings = self.embed_tensors(batch.images) if batch.ok else np.zeros((0, self.dim), np.float32)
            yield EmbeddedChunk(embeddings, batch.ok, batch.failures)
