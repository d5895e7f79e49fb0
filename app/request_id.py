"""``X-Request-ID``: taken from the request when it is a sane token, else made here; echoed on the answer and
put on every log record written while the request runs (``%(request_id)s``, ``%(request_suffix)s``).

The same outermost middleware turns an exception no handler took into a 500 problem: Starlette's own last-resort
handler runs outside every middleware, where the answer would carry no request id and its log line none either.
One middleware for both, since each layer costs every request a coroutine and a ``send`` wrapper."""

from __future__ import annotations

import logging
import re
import secrets
from contextvars import ContextVar

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import send_error

log = logging.getLogger(__name__)

HEADER = b"x-request-id"
# Letters, digits and . _ : - up to 128: any id a proxy or a caller makes (UUIDs, W3C trace ids), and nothing
# that could forge a log line or bloat one.
_SANE = re.compile(rb"[A-Za-z0-9._:\-]{1,128}")
current_request_id: ContextVar[str] = ContextVar("request_id", default="-")


class RequestIdFilter(logging.Filter):
    """Adds ``record.request_id`` ("-" outside a request) and ``record.request_suffix`` (" [id]", or nothing
    outside a request): attach it to a handler, or to a logger for the records that logger makes itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        request_id = current_request_id.get()
        record.request_id = request_id
        record.request_suffix = "" if request_id == "-" else f" [{request_id}]"
        return True


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v for k, v in scope["headers"] if k == HEADER), None)
        request_id = given.decode() if given is not None and _SANE.fullmatch(given) else secrets.token_hex(16)
        raw = request_id.encode()
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = [*message.get("headers", ()), (HEADER, raw)]
            await send(message)

        token = current_request_id.set(request_id)
        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("unhandled error on %s %s", scope["method"], scope["path"])
            if started:  # too late for an answer of our own
                raise
            await send_error(send_with_id, 500, "internal_error", "Unexpected server error.")
        finally:
            current_request_id.reset(token)
