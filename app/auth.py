"""Optional API keys with read and write scopes, sent in the ``X-API-Key`` header or as
``Authorization: Bearer <key>`` (the same keys; X-API-Key wins when both are sent).

No keys configured: the API is open. Otherwise a missing or unknown key gets 401 (with ``WWW-Authenticate``)
and a read key on a write route gets 403. Write keys also read. Health endpoints never ask; ``/metrics`` asks
for a read key unless ``metrics_public`` is set.

The check runs twice on purpose: :class:`ApiKeyMiddleware` answers from the headers alone, before the app reads a
byte of the body (an anonymous 39 MB upload was read in full before its 401), and the routes' dependencies
(``require_read`` / ``require_write``) document the scheme in OpenAPI and guard anything the middleware's table
misses. A test walks every route to keep the two in step.
"""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import ASGIApp, Receive, Scope, Send

from app.errors import ServiceError, send_error
from app.settings import Settings, app_settings

API_KEY_HEADER = "X-API-Key"
api_key_header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, description="read or write API key")
bearer = HTTPBearer(auto_error=False, description="the same API key as `Authorization: Bearer <key>`")
CHALLENGE = {"WWW-Authenticate": f'APIKey header="{API_KEY_HEADER}", Bearer'}
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _matches(key: str, keys: list[str]) -> bool:
    # Compare against every key, each in constant time, so timing reveals nothing about which key is close.
    found = False
    for candidate in keys:
        found |= secrets.compare_digest(key.encode(), candidate.encode())
    return found


def _check(settings: Settings, key: str | None, scope: str) -> None:
    if not settings.auth_enabled:
        return
    challenge = CHALLENGE
    if not key:
        detail = f"Send an API key in the {API_KEY_HEADER} header (or as Authorization: Bearer <key>)."
        raise ServiceError(401, "missing_api_key", detail, challenge)
    if _matches(key, settings.api_keys_write):
        return
    if _matches(key, settings.api_keys_read):
        if scope == "read":
            return
        raise ServiceError(403, "insufficient_scope", "This key may read but not change the gallery.")
    raise ServiceError(401, "invalid_api_key", "The API key is not valid.", challenge)


def required_scope(settings: Settings, method: str, path: str) -> str | None:
    """The key a request needs, from its method and path alone: ``write`` to change the gallery, ``read`` for the
    rest of ``/v1`` (and ``/metrics`` unless public), None for health, readiness, the page and its files."""
    if path == "/metrics":
        return None if settings.metrics_public else "read"
    if not path.startswith("/v1/"):
        return None
    changes_gallery = path.rstrip("/") == "/v1/gallery" or path.startswith("/v1/gallery/")
    return "write" if changes_gallery and method not in READ_METHODS else "read"


class ApiKeyMiddleware:
    """Refuses a request without the key it needs before the app reads its body; the connection is closed when
    a body was announced, so an unread upload is not read to keep the connection."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app, self.settings, self.enabled = app, settings, settings.auth_enabled

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.enabled or scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        needed = required_scope(self.settings, scope["method"], scope["path"])
        if needed is None:
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        key = headers.get(API_KEY_HEADER.lower().encode()) or _bearer_token(headers.get(b"authorization"))
        try:
            _check(self.settings, key.decode("latin-1") if key is not None else None, needed)
        except ServiceError as err:
            has_body = headers.get(b"content-length", b"0") != b"0" or b"transfer-encoding" in headers
            await send_error(send, err.status, err.code, err.detail, err.headers, close=has_body)
            return
        await self.app(scope, receive, send)


def _bearer_token(value: bytes | None) -> bytes | None:
    scheme, _, token = (value or b"").partition(b" ")
    return token.strip() or None if scheme.lower() == b"bearer" else None


ApiKey = Annotated[str | None, Security(api_key_header)]
BearerKey = Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]


def _key(key: str | None, credentials: HTTPAuthorizationCredentials | None) -> str | None:
    return key or (credentials.credentials if credentials else None)


async def require_read(
    settings: Annotated[Settings, Depends(app_settings)], key: ApiKey, credentials: BearerKey
) -> None:
    _check(settings, _key(key, credentials), "read")


async def require_write(
    settings: Annotated[Settings, Depends(app_settings)], key: ApiKey, credentials: BearerKey
) -> None:
    _check(settings, _key(key, credentials), "write")


async def require_metrics(
    settings: Annotated[Settings, Depends(app_settings)], key: ApiKey, credentials: BearerKey
) -> None:
    if not settings.metrics_public:
        _check(settings, _key(key, credentials), "read")
