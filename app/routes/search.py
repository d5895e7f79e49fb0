"""Find similar gallery items: by an uploaded photo, by several, by a vector, or by an item already in the gallery.

Every search takes ``k``, an optional ``label`` and an optional ``score_threshold`` (the largest distance to
return: lower distance = more similar). A label that names no item answers an empty result that says so and
lists the labels there are, rather than an empty list that looks like "nothing similar".
"""

from __future__ import annotations

import time
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, File, Form, Query, UploadFile

from app.deps import FormRules, ItemId, ReadAccess, ServiceDep, read_upload
from app.errors import ServiceError, not_found
from app.problems import error_responses
from app.schemas import BatchSearchResponse, SearchHit, SearchResponse, VectorSearchRequest
from app.service import Service, elapsed_ms
from index import Hit

MAX_K = 100
router = APIRouter(prefix="/v1", tags=["search"], dependencies=[ReadAccess])

KForm = Annotated[int, Form(ge=1, le=MAX_K, description="number of results")]
LabelForm = Annotated[str | None, Form(max_length=200, description="only items with this label")]
THRESHOLD_HELP = "only results at most this distance away (0..2; lower distance = more similar)"
ThresholdForm = Annotated[float | None, Form(ge=0, le=2, description=THRESHOLD_HELP)]


def _found(service: Service, raw: list[Hit], score_threshold: float | None) -> list[SearchHit]:
    if score_threshold is not None:
        raw = [h for h in raw if h.distance <= score_threshold]
    return service.hits(raw)


def _label_note(service: Service, label: str | None, empty: bool) -> tuple[str | None, list[str] | None]:
    """``unknown_label`` and ``known_labels`` when ``label`` names no item (looked up only for an empty result)."""
    if not label or not empty:
        return None, None
    known = service.index.labels()
    return (None, None) if label in known else (label, sorted(known))


def _answer(
    service: Service, start: float, raw: list[Hit], label: str | None, score_threshold: float | None
) -> SearchResponse:
    unknown, known = _label_note(service, label, not raw)
    return SearchResponse(
        results=_found(service, raw, score_threshold),
        took_ms=elapsed_ms(start),
        index_version=service.index.version,
        unknown_label=unknown,
        known_labels=known,
    )


@router.post(
    "/search",
    response_model=SearchResponse,
    dependencies=[Depends(FormRules(files={"image": 1}, integers=("k",)))],
    responses=error_responses(401, 413, 415, 422, 503),
    summary="Find the gallery items nearest to a photo",
)
async def search(
    service: ServiceDep,
    image: Annotated[UploadFile, File(description="the query image")],
    k: KForm = 5,
    label: LabelForm = None,
    score_threshold: ThresholdForm = None,
) -> SearchResponse:
    start = time.perf_counter()
    upload = await read_upload(image, "image", service.settings.max_upload_bytes)
    vectors = await service.embed([upload])
    hits = await service.search(vectors, k, label or None)
    return _answer(service, start, hits[0], label, score_threshold)


@router.post(
    "/search/batch",
    response_model=BatchSearchResponse,
    dependencies=[Depends(FormRules(integers=("k",)))],
    responses=error_responses(401, 413, 415, 422, 503),
    summary="Search with several photos at once",
)
async def search_batch(
    service: ServiceDep,
    images: Annotated[list[UploadFile], File(description="one or more query images")],
    k: KForm = 5,
    label: LabelForm = None,
    score_threshold: ThresholdForm = None,
) -> BatchSearchResponse:
    start = time.perf_counter()
    limit = service.settings.max_batch_images
    if len(images) > limit:
        raise ServiceError(422, "too_many_images", f"Send at most {limit} images; got {len(images)}.")
    uploads = [await read_upload(f, f"images[{i}]", service.settings.max_upload_bytes) for i, f in enumerate(images)]
    vectors = await service.embed(uploads)
    hits = await service.search(vectors, k, label or None)
    unknown, known = _label_note(service, label, not any(hits))
    return BatchSearchResponse(
        queries=[_found(service, h, score_threshold) for h in hits],
        took_ms=elapsed_ms(start),
        index_version=service.index.version,
        unknown_label=unknown,
        known_labels=known,
    )


@router.post(
    "/search/vector",
    response_model=SearchResponse,
    responses=error_responses(401, 422, 503),
    summary="Find the gallery items nearest to a vector (from POST /v1/embed)",
)
async def search_vector(service: ServiceDep, query: VectorSearchRequest) -> SearchResponse:
    start = time.perf_counter()
    vector = np.asarray(query.vector, dtype=np.float64)  # float32 would turn 1e300 into inf with a warning
    if vector.shape[0] != service.embedder.dim:
        raise ServiceError(
            422,
            "wrong_dimension",
            f"The vector has {vector.shape[0]} values; this model's have {service.embedder.dim}.",
        )
    norm = float(np.linalg.norm(vector))
    if not np.isfinite(norm) or norm == 0:
        raise ServiceError(422, "invalid_vector", "The vector must be finite and not all zeros.")
    unit = (vector / norm).astype(np.float32).reshape(1, -1)
    hits = await service.search(unit, query.k, query.label or None)
    return _answer(service, start, hits[0], query.label, query.score_threshold)


@router.get(
    "/gallery/{item_id}/similar",
    response_model=SearchResponse,
    responses=error_responses(401, 404, 422, 503),
    summary="Find the gallery items nearest to a stored item",
)
async def similar(
    service: ServiceDep,
    item_id: ItemId,
    k: Annotated[int, Query(ge=1, le=MAX_K)] = 5,
    label: Annotated[str | None, Query(max_length=200)] = None,
    score_threshold: Annotated[float | None, Query(ge=0, le=2, description=THRESHOLD_HELP)] = None,
) -> SearchResponse:
    start = time.perf_counter()
    vector = service.index.vector(item_id)
    if vector is None:
        raise not_found(item_id)
    hits = await service.search(vector.reshape(1, -1), k + 1, label or None)
    others = [h for h in hits[0] if h.id != item_id][:k]  # the item itself is not a result
    return _answer(service, start, others, label, score_threshold)
