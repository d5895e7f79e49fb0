"""Gallery management: list, inspect, view, add and delete items."""

from __future__ import annotations

import hashlib
from typing import Annotated

from anyio import to_thread
from fastapi import APIRouter, Depends, File, Form, Header, Query, Response, UploadFile
from fastapi.responses import JSONResponse

from app.deps import FormRules, ItemId, ReadAccess, ServiceDep, WriteAccess, read_upload
from app.errors import ServiceError, not_found
from app.gallery_ops import add_item, refuse_a_second_label, relabel_item, remove_item, render_image, to_item
from app.problems import error_responses
from app.schemas import (
    AddItemResponse,
    DeleteResponse,
    GalleryItem,
    GalleryPage,
    RelabelRequest,
    RelabelResponse,
)
from app.service import Service

router = APIRouter(prefix="/v1/gallery", tags=["gallery"])


@router.get(
    "",
    response_model=GalleryPage,
    dependencies=[ReadAccess],
    responses=error_responses(401, 422, 503),
    summary="List gallery items, a page at a time",
)
async def list_items(
    service: ServiceDep,
    offset: Annotated[int, Query(ge=0, le=2**62)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    label: Annotated[str | None, Query(max_length=200)] = None,
) -> GalleryPage:
    records, total = await to_thread.run_sync(lambda: service.index.items(offset, limit, label=label or None))
    labels = service.index.labels()
    return GalleryPage(
        items=[to_item(r) for r in records],
        total=total,
        offset=offset,
        limit=limit,
        labels=labels,
        unknown_label=label if label and label not in labels else None,
    )


@router.get(
    "/{item_id}",
    response_model=GalleryItem,
    dependencies=[ReadAccess],
    responses=error_responses(401, 404, 422, 503),
    summary="One gallery item",
)
async def get_item(service: ServiceDep, item_id: ItemId) -> GalleryItem:
    record = service.index.get(item_id)
    if record is None:
        raise not_found(item_id)
    return to_item(record)


def _matches(if_none_match: str | None, tag: str) -> bool:
    """RFC 9110 If-None-Match: any of the listed tags (weak comparison), or ``*``."""
    if if_none_match is None:
        return False
    sent = {t.strip().removeprefix("W/") for t in if_none_match.split(",")}
    return "*" in sent or tag in sent


@router.get(
    "/{item_id}/image",
    dependencies=[ReadAccess],
    response_class=Response,
    responses={
        200: {
            "content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}},
            "description": "re-encoded JPEG, with an ETag",
        },
        304: {"description": "not modified: the ETag sent in If-None-Match is still the image's"},
        **error_responses(401, 404, 422, 503),
    },
    summary="The item's image, re-encoded as JPEG",
)
async def get_image(
    service: ServiceDep,
    item_id: ItemId,
    size: Annotated[int | None, Query(ge=16, le=1024, description="longest side of a thumbnail")] = None,
    if_none_match: Annotated[str | None, Header(description="an ETag from an earlier answer")] = None,
) -> Response:
    record = service.index.get(item_id)
    if record is None:
        raise not_found(item_id)
    # An item's content never changes (ids are not reused), so its hash, the size asked for and the stored
    # side identify the bytes: a cache revalidates without the image being decoded again.
    tag = f'"{record.sha256[:32]}-{size or 0}-{service.settings.media_max_side}"'
    headers = {"ETag": tag, "Cache-Control": "private, max-age=3600"}
    if _matches(if_none_match, tag):
        return Response(status_code=304, headers=headers)
    data = await to_thread.run_sync(render_image, service, item_id, size)
    return Response(data, media_type="image/jpeg", headers=headers)


@router.post(
    "",
    response_model=AddItemResponse,
    status_code=201,
    dependencies=[WriteAccess, Depends(FormRules(files={"image": 1}))],
    responses={
        200: {"model": AddItemResponse, "description": "the image was already in the gallery"},
        **error_responses(401, 403, 409, 413, 415, 422, 503, 507),
    },
    summary="Add an image with its label",
)
async def add(
    service: ServiceDep,
    image: Annotated[UploadFile, File(description="the image to add")],
    label: Annotated[str, Form(min_length=1, max_length=200, description="its class, e.g. the breed")],
) -> JSONResponse:
    """The change is saved durably before the response; the stored image is a re-encoded copy. The same image
    (by sha256) again with the same label is answered 200 with the item it already is; with another label 409
    ``label_conflict``, with that item as ``existing``: an image has one label, changed by relabelling."""
    label = label.strip()
    if not label or not label.isprintable():
        raise ServiceError(422, "invalid_label", "The label must be non-empty printable text.")
    upload = await read_upload(image, "image", service.settings.max_upload_bytes)
    _refuse_a_second_label(service, upload.data, label)
    # Admitted and decoded within the memory budget like a search; the vector is the one search would compute.
    stored, vector = await service.embed_for_gallery(upload)
    record, created, version = await to_thread.run_sync(add_item, service, upload.data, stored, label, vector)
    body = AddItemResponse(**to_item(record).model_dump(), created=created, index_version=version)
    return JSONResponse(body.model_dump(mode="json"), status_code=201 if created else 200)


def _refuse_a_second_label(service: Service, data: bytes, label: str) -> None:
    """Checked before embedding, to answer at once; add_item checks again under its lock."""
    known = service.index.id_for_sha(hashlib.sha256(data).hexdigest())
    refuse_a_second_label(service.index.get(known) if known is not None else None, label)


@router.patch(
    "/{item_id}",
    response_model=RelabelResponse,
    dependencies=[WriteAccess],
    responses=error_responses(401, 403, 404, 422, 503, 507),
    summary="Give an item a new label",
)
async def relabel(service: ServiceDep, item_id: ItemId, change: RelabelRequest) -> RelabelResponse:
    """Durable before the answer, like every change; the item keeps its id, image and vector."""
    label = change.label.strip()
    if not label or not label.isprintable():
        raise ServiceError(422, "invalid_label", "The label must be non-empty printable text.")
    record, version = await to_thread.run_sync(relabel_item, service, item_id, label)
    return RelabelResponse(**to_item(record).model_dump(), index_version=version)


@router.delete(
    "/{item_id}",
    response_model=DeleteResponse,
    dependencies=[WriteAccess],
    responses=error_responses(401, 403, 404, 422, 503, 507),
    summary="Delete an item",
)
async def delete(service: ServiceDep, item_id: ItemId) -> DeleteResponse:
    version = await to_thread.run_sync(remove_item, service, item_id)
    return DeleteResponse(id=item_id, index_version=version)
