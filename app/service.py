"""The loaded service: embedder, gallery index and batcher, and the work each request hands off to them.

CPU work (decoding, re-encoding, searching a large gallery, saving) runs in worker threads via ``anyio``; the
forward pass runs on the batcher's instance threads. Nothing here runs on the event loop for long: a search of
a small gallery does, because it takes less time than the thread hop.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from anyio import to_thread
from PIL import Image

from app.batching import BatcherClosedError, DynamicBatcher, QueueFullError
from app.errors import ServiceError, image_error, too_large
from app.prometheus import Metrics
from app.schemas import ModelInfo, SearchHit
from app.settings import Settings
from index import GalleryIndex, Hit
from model.core.device import cpu_count
from model.core.images import ImageError, load_image
from model.inference.decode import decode_tensor
from model.inference.embedder import Embedder
from model.inference.engines import OnnxEngine

log = logging.getLogger(__name__)

INLINE_SEARCH_FLOATS = 2**20  # galleries up to this many stored floats are searched on the event loop


def _one_torch_thread() -> None:
    # Single-threaded instances are the parallelism: torch's own threads (the batch's normalisation) only add
    # wake-ups and spinning (measured with the model skipped: 2.22 -> 2.16 CPU ms per /v1/search request).
    # Threads started afterwards inherit the setting; the serving process does no other heavy torch work.
    torch.set_num_threads(1)


def build_embedder(settings: Settings) -> Embedder:
    kwargs: dict[str, Any] = {"device": settings.device}
    if "engine" in inspect.signature(Embedder).parameters:
        kwargs["engine"] = settings.engine
    return Embedder(settings.checkpoint, **kwargs)


def open_index(settings: Settings, embedder: Embedder) -> GalleryIndex:
    """Open the gallery built by this model, or create an empty one; a gallery of another model is refused."""
    ckpt = embedder.checkpoint
    index_dir = Path(settings.index)
    if (index_dir / "CURRENT").is_file():
        return GalleryIndex.open(index_dir, model_hash=ckpt.hash, dim=embedder.dim)
    log.info("no gallery at %s: creating an empty one", index_dir)
    return GalleryIndex.create(index_dir, model_hash=ckpt.hash, backbone=ckpt.config.backbone, dim=embedder.dim)


@dataclass
class Upload:
    field: str
    data: bytes
    error: ServiceError | None = None  # set by a model instance that could not decode it


@dataclass
class Service:
    settings: Settings
    embedder: Embedder
    index: GalleryIndex
    metrics: Metrics
    batcher: DynamicBatcher[torch.Tensor | Upload] = field(init=False)
    write_lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        s = self.settings
        onnx = isinstance(self.embedder.engine, OnnxEngine)
        instances = s.model_instances or (cpu_count() if onnx else 1)
        # Several instances on ONNX Runtime: single-threaded passes share the cores instead of each taking all,
        # and each instance decodes its own batch (as embed_files' workers do), so a request's bytes go
        # straight to the batcher: no decoding thread, one thread hop fewer per request.
        self._single_threaded = onnx and instances > 1
        self._passes = 0  # forward passes running now
        self._passes_lock = threading.Lock()
        self.batcher = DynamicBatcher(
            self._forward,
            max_batch=s.batch_max_size or (64 if self.device_type == "cuda" else 8),
            max_wait_s=s.batch_max_wait_ms / 1000,
            max_queue=s.queue_max,
            enabled=s.batching,
            instances=instances,
            on_batch=self.metrics.batch_size.observe,
            initializer=_one_torch_thread if self._single_threaded else None,
        )
        self.metrics.bind(lambda: self.batcher.depth, lambda: self.index.count)

    @property
    def device_type(self) -> str:
        return str(getattr(getattr(self.embedder, "device", None), "type", "cpu"))

    @property
    def model_info(self) -> ModelInfo:
        ckpt = self.embedder.checkpoint
        return ModelInfo(
            hash=ckpt.hash,
            backbone=ckpt.config.backbone,
            embedding_dim=self.embedder.dim,
            image_size=ckpt.config.image_size,
        )

    # -- embedding ------------------------------------------------------------------------------------------
    def _forward(self, items: list[torch.Tensor | Upload]) -> np.ndarray:
        """A model instance: decode and crop the uploads (with several instances), then the whole batch to
        float at once, then the model. An upload that does not decode keeps its error and a blank row."""
        crops = [self._crop_or_blank(item) if isinstance(item, Upload) else item for item in items]
        batch = self.embedder.preset.normalise(torch.stack(crops))
        engine = self.embedder.engine
        with self._passes_lock:
            self._passes += 1
            alone = self._passes == 1
        try:
            # A pass that runs alone takes every core (a lone request is answered sooner); passes that run
            # together take one core each instead of contending for all of them.
            if self._single_threaded and not alone and isinstance(engine, OnnxEngine):
                return engine.run_single_threaded(batch)
            return self.embedder.embed_tensors(batch)
        finally:
            with self._passes_lock:
                self._passes -= 1

    def _crop_or_blank(self, upload: Upload) -> torch.Tensor:
        try:
            return self._crop(upload)
        except ServiceError as exc:
            upload.error = exc  # the request raises it; the batch goes on without this image
            size = self.embedder.preset.image_size
            return torch.zeros(3, size, size, dtype=torch.uint8)

    def decode(self, upload: Upload, draft_size: int | None) -> Image.Image:
        """An upload as a Pillow image (for storing it); bad bytes become their 4xx."""
        self._check_size(upload)
        try:
            return load_image(upload.data, draft_size=draft_size, max_pixels=self.settings.max_pixels)
        except ImageError as exc:
            raise image_error(exc, upload.field) from exc

    def _crop(self, upload: Upload) -> torch.Tensor:
        """Per-request work in the request's thread: decode straight to a tensor, resize and crop on uint8."""
        self._check_size(upload)
        preset = self.embedder.preset
        try:
            image = decode_tensor(upload.data, draft_size=preset.resize_size, max_pixels=self.settings.max_pixels)
        except ImageError as exc:
            raise image_error(exc, upload.field) from exc
        return preset.crop(image)

    def _check_size(self, upload: Upload) -> None:
        if len(upload.data) > self.settings.max_upload_bytes:
            raise too_large(self.settings.max_upload_bytes)

    async def embed(self, uploads: list[Upload]) -> np.ndarray:
        """Uploads -> unit embeddings (n, d) through the shared batcher; decoded in a worker thread, or by the
        model instance that takes them."""
        try:
            with self.batcher.admit(len(uploads)) as admission:
                if self._single_threaded:
                    for upload in uploads:
                        self._check_size(upload)
                    vectors = await self.batcher.submit(uploads, admission)
                    errors = [u.error for u in uploads if u.error is not None]
                    if errors:
                        raise errors[0]
                else:
                    crops = await to_thread.run_sync(lambda: [self._crop(u) for u in uploads])
                    vectors = await self.batcher.submit(crops, admission)
        except QueueFullError as exc:
            self.metrics.rejected.inc()
            retry = {"Retry-After": str(self.settings.retry_after_s)}
            raise ServiceError(503, "overloaded", f"Too busy: {exc} Retry shortly.", retry) from exc
        except BatcherClosedError as exc:
            raise ServiceError(503, "draining", str(exc), {"Retry-After": "1"}) from exc
        if not np.isfinite(vectors).all():
            raise ServiceError(422, "invalid_embedding", "The model produced a non-finite embedding for this image.")
        return vectors

    # -- search ---------------------------------------------------------------------------------------------
    def hits(self, raw: list[Hit]) -> list[SearchHit]:
        return [
            SearchHit(
                id=h.id,
                label=h.label,
                distance=float(h.distance),
                similarity=float(h.similarity),
                image_url=f"/v1/gallery/{h.id}/image",
            )
            for h in raw
        ]

    async def search(self, vectors: np.ndarray, k: int, label: str | None) -> list[list[Hit]]:
        # A thread hop costs more than an exact search of a small gallery (about 0.1 ms for 4,000 items of 256
        # floats), so that runs here; a larger gallery is searched in a worker thread, off the event loop.
        if self.index.count * self.index.dim <= INLINE_SEARCH_FLOATS:
            return self.index.search(vectors, k, label=label)
        return await to_thread.run_sync(lambda: self.index.search(vectors, k, label=label))


def elapsed_ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 3)
