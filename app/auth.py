"""Optional API keys with read and write scopes, sent in the ``X-API-Key`` header.

No keys configured: the API is open. Otherwise a missing or unknown key gets 401 (with ``WWW-Authenticate``)
and a read key on a write route gets 403. Write keys also read. Health endpoints never ask.
"""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Security
from fastapi.security import APIKeyHeader

from app.errors import ServiceError
from app.settings import Settings, app_settings

API_KEY_HEADER = "X-API-Key"
api_key_header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, description="read or write API key")


def _matches(key: str, keys: list[str]) -> bool:
    # Compare against every key, each in constant time, so timing reveals nothing about which key is close.
    found = False
    for candidate in keys:
        found |= secrets.compare_digest(key.encode(), candidate.encode())
    return found


def _check(settings: Settings, key: str | None, scope: str) -> None:
    if not settings.auth_enabled:
        return
    challenge = {"WWW-Authenticate": f'APIKey header="{API_KEY_HEADER}"'}
    if not key:
        raise ServiceError(401, "missing_api_key", f"Send an API key in the {API_KEY_HEADER} header.", challenge)
    if _matches(key, settings.api_keys_write):
        return
    if _matches(key, settings.api_keys_read):
        if scope == "read":
            return
        raise ServiceError(403, "insufficient_scope", "This key may read but not change the gallery.")
    raise ServiceError(401, "invalid_api_key", "The API key is not valid.", challenge)


async def require_read(
    settings: Annotated[Settings, Depends(app_settings)], key: Annotated[str | None, Security(api_key_header)]
) -> None:
    _check(settings, key, "read")


async def require_write(
    settings: Annotated[Settings, Depends(app_settings)], key: Annotated[str | None, Security(api_key_header)]
) -> None:
    _check(settings, key, "write")
