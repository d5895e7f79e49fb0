"""The loaded service: embedder, gallery index and batcher, and the work each request hands off to them.

Every upload is admitted by the bounded queue before anything decodes it, and decoded within a memory budget
(``app.budget``): the excess is refused at once with 503 ``overloaded``. Turning bytes into vectors is the
embedder's job (``Embedder.embed_uploads``: decode, check, crop, normalise, run, one result or error per
upload); this module only decides where that runs. With several model instances each decodes its own batch
(a request's bytes go straight to the batcher); with one, uploads are decoded in worker threads so that decoding
overlaps the forward pass. CPU work runs in worker threads via ``anyio``, never on the event loop for long: a
search of a small gallery does, because it takes less time than the thread hop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from anyio import to_thread
from PIL import Image

from app.batching import Admission, BatcherClosedError, DynamicBatcher, QueueFullError
from app.budget import MemoryBudget, OverBudgetError
from app.errors import ServiceError, image_error, too_large
from app.locations import model_checkpoint
from app.media import shrink
from app.prometheus import Metrics
from app.schemas import ModelInfo, SearchHit
from app.settings import Settings
from index import CompactionPolicy, Hit
from index.backend import Gallery, create_empty_gallery, gallery_exists, open_gallery, recorded_precision
from model.core.device import resolve_device
from model.core.images import ImageError, load_image
from model.inference.embedder import Embedder, ModelError
from model.inference.engines import precision_for_gallery

log = logging.getLogger(__name__)

READ_ONLY_WAIT_S = 60.0  # a read-only process waits this long for the writer to create a missing gallery
INLINE_SEARCH_FLOATS = 2**20  # galleries up to this many stored floats are searched on the event loop

Item = bytes | torch.Tensor  # what a request hands the batcher per image: raw bytes, or a crop ready for the model
Outcome = np.ndarray | Exception  # what comes back per image: its unit vector, or why it has none


def _one_torch_thread() -> None:
    # Single-threaded instances are the parallelism: torch's own threads (the batch's normalisation) only add
    # wake-ups and spinning (measured with the model skipped: 2.22 -> 2.16 CPU ms per /v1/search request).
    # Threads started afterwards inherit the setting; the serving process does no other heavy torch work.
    torch.set_num_threads(1)


def load_embedder(settings: Settings) -> Embedder:
    """The embedder of the settings; precision ``auto`` follows the gallery's (int8 stays int8, float stays
    float), so a gallery is never mixed with vectors of other numerics."""
    checkpoint = model_checkpoint(settings)  # IMGSIM_CHECKPOINT, else the gallery's model, else RUN_DIR's
    precision = settings.precision
    if precision == "auto":
        precision = precision_for_gallery(recorded_precision(settings.index), resolve_device(settings.device))
    return Embedder(
        checkpoint,
        device=settings.device,
        engine=settings.engine,
        max_pixels=settings.max_pixels,
        precision=precision,
    )


def open_index(settings: Settings, embedder: Embedder) -> Gallery:
    """Open the gallery built by this model, or create an empty one; a gallery of another model, or embedded in
    other numerics (int8 vs float), is refused. ``settings.index`` is a folder (FAISS),
    ``milvus://HOST:PORT/COLLECTION`` or a Milvus Lite ``*.db``."""
    ckpt = embedder.checkpoint
    policy = CompactionPolicy(max_changes=settings.compact_max_changes, max_age_s=settings.compact_max_age_s)
    media = settings.media_dir
    if settings.read_only:  # a replica: the writer creates the gallery (a few seconds, when it starts beside us)
        deadline = time.monotonic() + READ_ONLY_WAIT_S
        while not gallery_exists(settings.index) and time.monotonic() < deadline:
            time.sleep(0.2)
        return open_gallery(settings.index, model_hash=ckpt.hash, dim=embedder.dim, media_dir=media)
    if gallery_exists(settings.index):
        return open_gallery(
            settings.index,
            model_hash=ckpt.hash,
            dim=embedder.dim,
            precision=embedder.precision,
            policy=policy,
            media_dir=media,
        )
    log.info("no gallery at %s: creating an empty one", settings.index)
    return create_empty_gallery(
        settings.index,
        model_hash=ckpt.hash,
        backbone=ckpt.config.backbone,
        dim=embedder.dim,
        precision=embedder.precision,
        policy=policy,
        media_dir=media,
    )


@dataclass
class Upload:
    field: str  # the form field, named in error details
    data: bytes


@dataclass
class Service:
    settings: Settings
    embedder: Embedder
    index: Gallery
    metrics: Metrics
    batcher: DynamicBatcher[Item, Outcome] = field(init=False)
    budget: MemoryBudget = field(init=False)

    def __post_init__(self) -> None:
        s = self.settings
        engine = self.embedder.engine
        instances = s.model_instances or engine.concurrent_calls
        self._instances_decode = instances > 1
        self.budget = MemoryBudget(s.decode_budget_bytes)
        self.batcher = DynamicBatcher(
            self._forward,
            max_batch=s.batch_max_size or (64 if self.device_type == "cuda" else 8),
            max_wait_s=s.batch_max_wait_ms / 1000,
            max_queue=s.queue_max,
            enabled=s.batching,
            instances=instances,
            on_batch=self.metrics.batch_size.observe,
            initializer=_one_torch_thread if instances > 1 and engine.concurrent_calls > 1 else None,
        )
        self.metrics.bind(lambda: self.batcher.depth, lambda: self.index.count)

    @property
    def device_type(self) -> str:
        return self.embedder.device.type

    @property
    def model_info(self) -> ModelInfo:
        ckpt = self.embedder.checkpoint
        return ModelInfo(
            hash=ckpt.hash,
            backbone=ckpt.config.backbone,
            embedding_dim=self.embedder.dim,
            image_size=ckpt.config.image_size,
            precision=self.embedder.precision,
        )

    # -- embedding ------------------------------------------------------------------------------------------
    def _forward(self, items: list[Item]) -> list[Outcome]:
        """A model instance's pass: the embedder decodes the raw uploads (each within the memory budget) and
        runs the batch; an upload that fails gets its error, the others their vectors."""
        return self.embedder.embed_uploads(items, reserve=self.budget.reserve)

    async def embed(self, uploads: list[Upload]) -> np.ndarray:
        """Uploads -> unit embeddings (n, d) through the shared batcher; any upload's error fails the request."""
        for upload in uploads:
            self._check_size(upload)
        with self._admitted(len(uploads)) as admission:
            if self._instances_decode:
                outcomes = await self.batcher.submit([u.data for u in uploads], admission)
            else:
                crops = await to_thread.run_sync(self._prepare, uploads)
                outcomes = await self.batcher.submit(crops, admission)
        return self._vectors(uploads, outcomes)

    def _prepare(self, uploads: list[Upload]) -> list[Item]:
        """Decode and crop in this worker thread, within the budget; the first bad upload fails the request."""
        crops: list[Item] = []
        for upload in uploads:
            try:
                crops.append(self.embedder.prepare(upload.data, self.budget.reserve))
            except Exception as exc:
                raise self._error(exc, upload.field) from exc
        return crops

    async def embed_for_gallery(self, upload: Upload) -> tuple[Image.Image, np.ndarray]:
        """The image to store (at most ``media_max_side``) and the vector of an upload, admitted and decoded
        within the budget like a search's. Decoded once when the stored copy and the model see the same pixels
        (anything but a JPEG large enough for ``draft`` to decode the two at different scales)."""
        self._check_size(upload)
        with self._admitted(1) as admission:
            stored, crop = await to_thread.run_sync(self._decode_for_gallery, upload)
            outcomes = await self.batcher.submit([crop], admission)
        return stored, self._vectors([upload], outcomes)[0]

    def _decode_for_gallery(self, upload: Upload) -> tuple[Image.Image, torch.Tensor]:
        embedder, media_side = self.embedder, self.settings.media_max_side
        try:
            header = embedder.probe(upload.data)
            once = header.decoded_size(media_side) == header.decoded_size(embedder.draft_size)
            cost = header.decode_bytes(media_side) + (0 if once else embedder.decode_cost(header))
            with self.budget.reserve(cost):
                image = load_image(upload.data, draft_size=media_side, max_pixels=self.settings.max_pixels)
                crop = embedder.prepare_decoded(image) if once else embedder.prepare(upload.data)
                return shrink(image, media_side), crop
        except Exception as exc:
            raise self._error(exc, upload.field) from exc

    @contextmanager
    def _admitted(self, images: int) -> Iterator[Admission]:
        try:
            with self.batcher.admit(images) as admission:
                yield admission
        except QueueFullError as exc:
            raise self._overloaded(f"Too busy: {exc} Retry shortly.") from exc
        except BatcherClosedError as exc:
            raise ServiceError(503, "draining", str(exc), {"Retry-After": "1"}) from exc

    def _vectors(self, uploads: list[Upload], outcomes: Sequence[Outcome]) -> np.ndarray:
        vectors = []
        for upload, outcome in zip(uploads, outcomes, strict=True):
            if isinstance(outcome, Exception):
                raise self._error(outcome, upload.field) from outcome
            vectors.append(outcome)
        stacked = np.stack(vectors)
        if not np.isfinite(stacked).all():
            raise ServiceError(422, "invalid_embedding", "The model produced a non-finite embedding for this image.")
        return stacked

    def _error(self, exc: Exception, field: str) -> Exception:
        """The answer to one upload's failure: its 4xx, 503 when the decoding budget is spent, or 500 when the
        model failed on an image that decoded fine."""
        if isinstance(exc, ServiceError):
            return exc
        if isinstance(exc, ImageError):
            return image_error(exc, field)
        if isinstance(exc, OverBudgetError):
            return self._overloaded(f"Too busy: {exc} Retry shortly.")
        if isinstance(exc, ModelError):
            return ServiceError(500, "embedding_failed", f"{field}: {exc}")
        return exc

    def _overloaded(self, detail: str) -> ServiceError:
        self.metrics.rejected.inc()
        return ServiceError(503, "overloaded", detail, {"Retry-After": str(self.settings.retry_after_s)})

    def _check_size(self, upload: Upload) -> None:
        if len(upload.data) > self.settings.max_upload_bytes:
            raise too_large(self.settings.max_upload_bytes)

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
        index = self.index
        if index.searched_in_memory and index.count * index.dim <= INLINE_SEARCH_FLOATS:
            return self.index.search(vectors, k, label=label)
        return await to_thread.run_sync(lambda: self.index.search(vectors, k, label=label))


def elapsed_ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 3)
