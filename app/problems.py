"""The error answers as the OpenAPI schema documents them: one RFC 9457 problem model, under
``application/problem+json``, on every status a route can really answer with (``app.errors`` makes them)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, ConfigDict, Field

from app.errors import PROBLEM_JSON
from app.schemas import GalleryItem


class Problem(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "type": "about:blank",
                    "title": "Unsupported Media Type",
                    "status": 415,
                    "code": "unsupported_format",
                    "detail": "image: Not a supported image. Only JPEG, PNG, WEBP, GIF, BMP are supported.",
                }
            ]
        }
    )
    type: str = Field(default="about:blank", description="RFC 9457: no further semantics beyond the status and code")
    title: str = Field(description="the HTTP status phrase")
    status: int = Field(description="the HTTP status code")
    code: str = Field(description="stable, machine-readable error code: branch on this")
    detail: str = Field(description="what went wrong, for people")
    existing: GalleryItem | None = Field(
        default=None, description="label_conflict: the item already holding this image, with its label"
    )


ERROR_DESCRIPTIONS = {
    400: "malformed request (e.g. a broken multipart body)",
    401: "missing or unknown API key (X-API-Key or Authorization: Bearer)",
    403: "the key may not do this (read key on a write route)",
    404: "no such gallery item (item_not_found, image_not_found)",
    409: "the same image is already in the gallery under another label (label_conflict: `existing` is that item; "
    "relabel it or delete it first), or another process changed the gallery (index_conflict)",
    413: "upload or body larger than the cap",
    415: "not a supported image format (the bytes are sniffed)",
    422: "invalid request (invalid_request, invalid_label, wrong_image_count, ...) or unusable image (empty_image, "
    "image_too_large, corrupt_image, bad_aspect_ratio, invalid_embedding)",
    503: "not ready, draining, or the queue is full (overloaded); a change that could not be made durable "
    "(storage_unavailable); see Retry-After",
    507: "the disk is full: the change was not made (storage_full)",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {s: {"model": Problem, "description": ERROR_DESCRIPTIONS[s]} for s in statuses}


def install_openapi(app: FastAPI) -> None:
    """The app's schema with every error response under ``application/problem+json`` (FastAPI puts each
    response model under ``application/json``), generated once."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes, tags=app.openapi_tags
        )
        for path_item in schema.get("paths", {}).values():
            for operation in path_item.values():
                for status, response in operation.get("responses", {}).items():
                    content = response.get("content", {})
                    if status[0] in "45" and "application/json" in content:
                        response["content"] = {PROBLEM_JSON: content.pop("application/json"), **content}
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
