"""Find similar gallery items: by an uploaded photo, by several, or by an item already in the gallery."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Query, UploadFile

from app.deps import FormRules, ItemId, ReadAccess, ServiceDep, read_upload
from app.errors import ServiceError, not_found
from app.schemas import BatchSearchResponse, SearchResponse, error_responses
from app.service import elapsed_ms

MAX_K = 100
router = APIRouter(prefix="/v1", tags=["search"], dependencies=[ReadAccess])

KForm = Annotated[int, Form(ge=1, le=MAX_K, description="number of results")]
LabelForm = Annotated[str | None, Form(max_length=200, description="only items with this label")]


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
) -> SearchResponse:
    start = time.perf_counter()
    upload = await read_upload(image, "image", service.settings.max_upload_bytes)
    vectors = await service.embed([upload])
    hits = await service.search(vectors, k, label or None)
    return SearchResponse(results=service.hits(hits[0]), took_ms=elapsed_ms(start), index_version=service.index.version)


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
) -> BatchSearchResponse:
    start = time.perf_counter()
    limit = service.settings.max_batch_images
    if len(images) > limit:
        raise ServiceError(422, "too_many_images", f"Send at most {limit} images; got {len(images)}.")
    uploads = [await read_upload(f, f"images[{i}]", service.settings.max_upload_bytes) for i, f in enumerate(images)]
    vectors = await service.embed(uploads)
    hits = await service.search(vectors, k, label or None)
    return BatchSearchResponse(
        queries=[service.hits(h) for h in hits],
        took_ms=elapsed_ms(start),
        index_version=service.index.version,
    )


@router.get(
    "/gallery/{item_id}/similar",
    response_model=SearchResponse,
    responses=error_responses(401, 404),
    summary="Find the gallery items nearest to a stored item",
)
async def similar(
    service: ServiceDep,
    item_id: ItemId,
    k: Annotated[int, Query(ge=1, le=MAX_K)] = 5,
    label: Annotated[str | None, Query(max_length=200)] = None,
) -> SearchResponse:
    start = time.perf_counter()
    vector = service.index.vector(item_id)
    if vector is None:
        raise not_found(item_id)
    hits = await service.search(vector.reshape(1, -1), k + 1, label or None)
    others = [h for h in hits[0] if h.id != item_id][:k]  # the item itself is not a result
    return SearchResponse(results=service.hits(others), took_ms=elapsed_ms(start), index_version=service.index.version)
