"""Batch embedding of images, files and uploaded bytes with a trained checkpoint: what the index and the service call.

``Embedder`` owns the checkpoint, an inference engine (see :mod:`model.inference.engines`: ONNX Runtime on CPU,
fp16 PyTorch on CUDA, eager PyTorch as the reference) and the eval transform. ``embed_files`` decodes in a
thread pool a few batches ahead of the forward pass (on the GPU for JPEGs when running on CUDA), so
end-to-end speed approaches forward-only speed. ``embed_uploads`` turns the raw bytes of many uploads into unit
vectors (decode, geometry check, crop, normalise, run), one upload's failure never failing another: what the
service calls.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from model.core.checkpoint import Checkpoint, load_checkpoint
from model.core.device import cpu_count, resolve_device
from model.core.images import MAX_PIXELS, ImageError, ImageHeader, probe
from model.core.presets import EvalPreset
from model.inference.decode import decode_tensor, iter_batches
from model.inference.engines import Engine, build_engine
from model.inference.workers import CHUNK, EmbeddedChunk, default_workers, embed_in_workers

log = logging.getLogger(__name__)


# Reserves memory for one decode (its estimated bytes) for as long as the context lasts, or raises to refuse it.
Reserve = Callable[[int], AbstractContextManager[object]]


class ModelError(RuntimeError):
    """The model failed on an upload that decoded fine (not the upload's fault)."""


@dataclass
class EmbedResult:
    embeddings: np.ndarray  # (n_ok, d) float32, rows in the order of ``ok``
    ok: list[int]  # indices into the input paths that were embedded
    failures: dict[int, str] = field(default_factory=dict)  # index -> reason, for unreadable files


class Embedder:
    """``Embedder(ckpt, device="auto", engine="auto", precision="auto")``; extra keyword options go to the engine.

    ``precision``: auto|fp32|int8|fp16|bf16 (:mod:`model.inference.engines`): auto is int8 on the CPU for a
    checkpoint that can be quantised (``calibration_images``, or the training photos it names), else fp32;
    fp16 on CUDA. Engine options: ``torch``: ``channels_last`` (default on CUDA), ``compile`` (torch.compile).
    ``onnx``: ``threads`` (ORT intra-op threads, default all cores), ``spin`` (ORT spin-waiting, default off),
    ``cache_dir``.
    ``gpu_decode`` (default True): decode JPEGs on the GPU when the device is CUDA. ``max_pixels``: the pixel cap
    of uploads (files always use the loader's default).
    """

    def __init__(
        self,
        checkpoint: Checkpoint | str | Path,
        device: str = "auto",
        engine: str = "auto",
        gpu_decode: bool = True,
        max_pixels: int = MAX_PIXELS,
        precision: str = "auto",
        calibration_images: Sequence[Path] | None = None,
        **engine_options: object,
    ) -> None:
        self.checkpoint = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
        self.device = resolve_device(device)
        self.model = self.checkpoint.model.eval()
        self.preset = EvalPreset(self.checkpoint.config.image_size)
        self.engine: Engine = build_engine(
            self.checkpoint, self.device, engine, precision, calibration_images, **engine_options
        )
        self.gpu_decode = gpu_decode and self.device.type == "cuda"
        self.max_pixels = max_pixels
        self._passes = 0  # forward passes of embed_uploads running now
        self._passes_lock = threading.Lock()
        log.info("embedding with engine %s (%s) on %s", self.engine.name, self.engine.precision, self.device)

    @property
    def dim(self) -> int:
        return self.checkpoint.config.embedding_dim

    @property
    def engine_name(self) -> str:
        return self.engine.name

    @property
    def precision(self) -> str:
        """fp32, int8, fp16 or bf16: what a gallery of these embeddings records."""
        return self.engine.precision

    def embed_tensors(self, batch: torch.Tensor) -> np.ndarray:
        """Transformed images (n, 3, h, w) -> unit-length embeddings (n, d) float32."""
        if len(batch) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.engine(batch)

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.embed_tensors(torch.stack([self.preset(im) for im in images]))

    # -- uploads: raw bytes -> unit vectors ---------------------------------------------------------------------
    @property
    def draft_size(self) -> int:
        """JPEG uploads are decoded at this ``draft_size`` (``load_image``): the short side the crop resizes to."""
        return self.preset.resize_size

    def probe(self, data: bytes) -> ImageHeader:
        """The upload's header, checked like every decode path checks it; raises :class:`ImageError`."""
        return probe(data, self.max_pixels)

    def decode_cost(self, header: ImageHeader) -> int:
        """Estimated peak bytes of :meth:`prepare` for an upload with this header."""
        return header.decode_bytes(self.draft_size)

    def prepare(self, data: bytes, reserve: Reserve | None = None) -> torch.Tensor:
        """One upload -> its (3, s, s) uint8 crop, decoded within ``reserve`` (when given) of its estimated cost.

        Raises :class:`ImageError` for anything wrong with the bytes (whatever the decoder raised), or what
        ``reserve`` raises to refuse the memory.
        """
        header = self.probe(data)
        with (reserve or _no_reserve)(self.decode_cost(header)):
            try:
                return self.preset.crop(decode_tensor(data, self.draft_size, self.max_pixels, header))
            except ImageError:
                raise
            except Exception as exc:  # a decoder or resize failure is this upload's, not the batch's
                log.warning("upload failed to decode: %r", exc)
                raise ImageError("corrupt_image", f"The image could not be decoded: {exc}") from exc

    def prepare_decoded(self, image: Image.Image) -> torch.Tensor:
        """The crop of an upload already decoded by ``load_image`` at the same decoded size as at ``draft_size``
        (so the same pixels): equal to :meth:`prepare` of its bytes, without decoding them again."""
        return self.preset.crop(image)

    def embed_uploads(
        self, uploads: Sequence[bytes | torch.Tensor], reserve: Reserve | None = None
    ) -> list[np.ndarray | Exception]:
        """Raw bytes (or crops from :meth:`prepare`) of many uploads -> one unit vector (d,) each, or the exception
        that upload failed with: :class:`ImageError` (bad bytes), what ``reserve`` raised, or :class:`ModelError`.

        One forward pass for the batch; if it fails, each upload is run alone, so only the one the model fails on
        gets an error. Several threads may call this at once (model instances): a pass that runs alone uses every
        core, passes that overlap use one core each (``Engine.run_single_threaded``).
        """
        errors: dict[int, Exception] = {}
        crops: dict[int, torch.Tensor] = {}
        for i, upload in enumerate(uploads):
            try:
                crops[i] = upload if isinstance(upload, torch.Tensor) else self.prepare(upload, reserve)
            except Exception as exc:
                errors[i] = exc
        rows = dict(zip(crops, self._run_or_each(list(crops.values())), strict=True)) if crops else {}
        return [errors[i] if i in errors else rows[i] for i in range(len(uploads))]

    def _run_or_each(self, crops: list[torch.Tensor]) -> list[np.ndarray | Exception]:
        try:
            return list(self._run(self.preset.normalise(torch.stack(crops))))
        except Exception as exc:
            log.exception("forward pass over %d uploads failed", len(crops))
            if len(crops) == 1:
                return [ModelError(f"The model failed on this image: {exc}")]
        return [self._run_or_each([crop])[0] for crop in crops]  # a pass each: only the culprit fails

    def _run(self, batch: torch.Tensor) -> np.ndarray:
        with self._passes_lock:
            self._passes += 1
            alone = self._passes == 1
        try:
            # A pass that runs alone takes every core (a lone request is answered sooner); passes that run
            # together take one core each instead of contending for all of them.
            return self.embed_tensors(batch) if alone else self.engine.run_single_threaded(batch)
        finally:
            with self._passes_lock:
                self._passes -= 1

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
        if self.engine.concurrent_calls > 1 and workers != 0:
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


def _no_reserve(nbytes: int) -> AbstractContextManager[object]:
    return nullcontext()
