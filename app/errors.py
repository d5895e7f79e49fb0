"""Domain errors and the one place that maps every error to an RFC 9457 problem (``application/problem+json``):
``{"type": "about:blank", "title": <the status's phrase>, "status": ..., "code": ..., "detail": ...}``, where
``code`` is this API's stable, machine-readable reason and ``detail`` says what went wrong, for people."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Send

from index.errors import IndexConflictError, StorageError, StorageFullError
from model.core.images import ImageError

log = logging.getLogger(__name__)

# model.core.images.ImageError codes -> HTTP status (RELIABILITY.md).
IMAGE_ERROR_STATUS = {
    "empty_image": 422,
    "unsupported_format": 415,
    "image_too_large": 422,
    "corrupt_image": 422,
    "bad_aspect_ratio": 422,
}

HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "too_many_requests",
    503: "unavailable",
    507: "insufficient_storage",
}


class ServiceError(Exception):
    """An error the caller can act on: a status, a stable ``code``, a human ``detail``, and optionally more
    members of the problem document (``extra``, e.g. the existing item of a conflict)."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        headers: dict[str, str] | None = None,
        extra: dict[str, object] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.headers, self.extra = status, code, detail, headers, extra


def not_found(item_id: int) -> ServiceError:
    return ServiceError(404, "item_not_found", f"No gallery item with id {item_id}.")


def image_error(exc: ImageError, field: str | None = None) -> ServiceError:
    where = f"{field}: " if field else ""
    return ServiceError(IMAGE_ERROR_STATUS.get(exc.code, 422), exc.code, where + exc.detail)


def too_large(limit: int) -> ServiceError:
    return ServiceError(413, "payload_too_large", f"The upload is larger than the {limit:,}-byte cap.")


def storage_failed(exc: StorageError) -> ServiceError:
    """A change that could not be made durable (nothing of it was applied): 507 when the disk is full, else
    503 (read-only, I/O error). Searches go on; the caller may retry once the disk is fixed."""
    detail = exc.strerror or str(exc)
    if isinstance(exc, StorageFullError):
        return ServiceError(507, "storage_full", detail)
    return ServiceError(503, "storage_unavailable", detail, {"Retry-After": "30"})


def index_conflict(exc: IndexConflictError) -> ServiceError:
    return ServiceError(409, "index_conflict", str(exc))


PROBLEM_JSON = "application/problem+json"


def error_body(status: int, code: str, detail: str, extra: dict[str, object] | None = None) -> dict[str, object]:
    """The problem document (RFC 9457) of an error answer; ``code`` is the extension member to branch on."""
    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    return {"type": "about:blank", "title": title, "status": status, "code": code, "detail": detail, **(extra or {})}


class ProblemResponse(JSONResponse):
    media_type = PROBLEM_JSON


def problem(
    status: int,
    code: str,
    detail: str,
    headers: Mapping[str, str] | None = None,
    extra: dict[str, object] | None = None,
) -> ProblemResponse:
    return ProblemResponse(error_body(status, code, detail, extra), status_code=status, headers=headers)


async def send_error(
    send: Send, status: int, code: str, detail: str, headers: dict[str, str] | None = None, close: bool = False
) -> None:
    """The problem answer, sent from an ASGI middleware (before routing); ``close`` ends the connection, for
    a request whose body is left unread."""
    body = json.dumps(error_body(status, code, detail)).encode()
    raw = [(b"content-type", PROBLEM_JSON.encode()), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    if close:
        raw.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def _validation_detail(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path", "header"))
        parts.append(f"{loc or 'request'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "The request is invalid."


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service(request: Request, exc: ServiceError) -> JSONResponse:
        return problem(exc.status, exc.code, exc.detail, exc.headers, exc.extra)

    @app.exception_handler(ImageError)
    async def _image(request: Request, exc: ImageError) -> JSONResponse:
        err = image_error(exc)
        return problem(err.status, err.code, err.detail)

    @app.exception_handler(StorageError)
    async def _storage(request: Request, exc: StorageError) -> JSONResponse:
        err = storage_failed(exc)
        log.error("%s %s: %s", request.method, request.url.path, err.detail)
        return problem(err.status, err.code, err.detail, err.headers)

    @app.exception_handler(IndexConflictError)
    async def _conflict(request: Request, exc: IndexConflictError) -> JSONResponse:
        err = index_conflict(exc)
        return problem(err.status, err.code, err.detail)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return problem(422, "invalid_request", _validation_detail(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = HTTP_CODES.get(exc.status_code, "http_error")
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        return problem(exc.status_code, code, detail, exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem(500, "internal_error", "Unexpected server error.")
