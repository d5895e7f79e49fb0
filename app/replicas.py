"""Read replicas of the embedded gallery: a process that only reads (``IMGSIM_READ_ONLY``) follows the writer's
versions and sends the changes it receives to the writer.

- Following: every ``follow_interval_s`` the replica's gallery catches up with the writer's log or new base
  (``GalleryIndex.refresh``). A search takes the published version once, so a reload never drops or splits a
  request: it answers from the old version or the new one.
- Writes (POST / PATCH / DELETE under ``/v1/gallery``) are forwarded as they came (headers, API key, request id,
  body) to ``writer_url``: ``http://host:port`` or ``unix:/path/to/socket`` (``imgsim serve --workers N``).
  The writer answers, and checks keys and limits, as if called directly (its answer gets a ``Via`` header);
  after a change succeeds the replica catches up before answering, so a client that reads through the same
  replica sees its own change. Without ``writer_url`` a write is answered 503 ``read_only_replica``. A request
  the writer could not be reached for is tried again for ``CONNECT_RETRY_S`` (a writer restarting), then
  answered 503 ``writer_unavailable`` (Retry-After).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import httpx
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from app.errors import send_error

log = logging.getLogger(__name__)

CONNECT_RETRY_S = 5.0  # a writer being restarted (serve --workers) is waited for this long before 503
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
WRITE_PREFIX = "/v1/gallery"
# Hop-by-hop headers (RFC 9110 7.6.1) and the ones the forwarded request or answer sets again.
_DROP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "host", "content-length"}
)


def is_write(scope: Scope) -> bool:
    path: str = scope["path"]
    return scope["method"] in WRITE_METHODS and (path == WRITE_PREFIX or path.startswith(WRITE_PREFIX + "/"))


def writer_client(writer_url: str, timeout_s: float = 120.0) -> httpx.AsyncClient:
    """A client for the writer: over a Unix socket (``unix:/path``) or HTTP (``http://host:port``)."""
    if writer_url.startswith("unix:"):
        transport = httpx.AsyncHTTPTransport(uds=writer_url.removeprefix("unix:"))
        return httpx.AsyncClient(transport=transport, base_url="http://writer", timeout=timeout_s)
    return httpx.AsyncClient(base_url=writer_url.rstrip("/"), timeout=timeout_s)


class ForwardWritesMiddleware:
    """On a read-only replica: writes go to the writer (or are refused); everything else is served here.

    Installed inside the key check and the body cap, so a request the writer would refuse for those is
    refused here already, without a trip to the writer."""

    def __init__(
        self, app: ASGIApp, client: httpx.AsyncClient | None, caught_up: Callable[[], Awaitable[None]]
    ) -> None:
        self.app, self.client, self.caught_up = app, client, caught_up

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_write(scope):
            await self.app(scope, receive, send)
            return
        if self.client is None:
            detail = "This replica only reads (IMGSIM_READ_ONLY): send changes to the gallery's writer."
            await send_error(send, 503, "read_only_replica", detail, close=True)
            return
        try:
            body = await _read_body(receive)
        except HTTPException as exc:  # the body cap, raised by BodyLimitMiddleware's receive
            await send_error(send, exc.status_code, "payload_too_large", str(exc.detail), close=True)
            return
        try:
            answer = await self._forward(self.client, scope, body)
        except httpx.HTTPError as exc:
            log.warning("forwarding %s %s to the writer failed: %r", scope["method"], scope["path"], exc)
            detail = "The gallery's writer cannot be reached right now; retry shortly."
            await send_error(send, 503, "writer_unavailable", detail, {"Retry-After": "1"})
            return
        if answer.is_success:
            await self.caught_up()  # read-your-writes through this replica
        headers = [(k.encode(), v.encode()) for k, v in answer.headers.items() if k.lower() not in _DROP]
        headers.append((b"content-length", str(len(answer.content)).encode()))
        headers.append((b"via", b"1.1 imgsim-replica"))  # RFC 9110 7.6.3: a forwarded answer names the hop
        await send({"type": "http.response.start", "status": answer.status_code, "headers": headers})
        await send({"type": "http.response.body", "body": answer.content})

    async def _forward(self, client: httpx.AsyncClient, scope: Scope, body: bytes) -> httpx.Response:
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
        headers = [(k, v) for k, v in headers if k.lower() not in _DROP]
        query = scope.get("query_string", b"").decode("latin-1")
        url = scope["path"] + (f"?{query}" if query else "")
        deadline = asyncio.get_running_loop().time() + CONNECT_RETRY_S
        while True:
            try:
                return await client.request(scope["method"], url, headers=headers, content=body)
            except httpx.ConnectError:  # nothing was sent: safe to try again while the writer (re)starts
                if asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.1)


async def _read_body(receive: Receive) -> bytes:
    parts = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(parts)


async def follow(refresh: Callable[[], Awaitable[bool]], interval_s: float) -> None:
    """Catch up with the writer every ``interval_s`` until cancelled; a failed attempt is logged and retried."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            if await refresh():
                log.debug("caught up with the writer")
        except Exception:
            log.exception("following the gallery's writer failed; retrying in %.1f s", interval_s)
