"""The limits uvicorn's httptools protocol lacks at the HTTP edge (issue 15, item 5), in a subclass of it.

uvicorn (0.54, read in the venv) has a keep-alive timeout, but with httptools no cap on header size and no timeout
for a request's headers (a first request's especially) or its body, and ``limit_concurrency`` answers 503 to
*requests* beyond the cap while half-sent connections never become requests: 500 of them were held open, a 50 MB
header was accepted, a 10-bytes/s body held for 30 s+. h11 has ``h11_max_incomplete_event_size`` but no timeouts
either, and parses in Python. This subclass keeps httptools' speed and adds:

- a cap on open connections: the one beyond it gets 503 and is closed at once;
- a cap on the request line and headers (431), counted as bytes arrive, so an endless header is cut off early;
- a deadline for the headers, from the connection's start or a request's first byte (408, or closed if idle);
- a deadline for the body in the manner of Apache's mod_reqtimeout: ``body_timeout_s`` plus one second per
  ``body_min_rate`` bytes received, so a slow but steady upload finishes and a trickle does not (408).

Keep-alive stays uvicorn's ``timeout_keep_alive``. The same limits belong on a reverse proxy: docs/deploy.md.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.errors import PROBLEM_JSON, error_body

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EdgeLimits:
    max_connections: int = 256
    header_max_bytes: int = 16 * 1024
    header_timeout_s: float = 10.0
    body_timeout_s: float = 10.0
    body_min_rate: int = 32 * 1024  # bytes/s


def guarded_protocol(limits: EdgeLimits) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with ``limits``: pass it as ``uvicorn.Config(http=...)``."""
    return type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,), {"limits": limits})


def raw_response(status: int, reason: str, code: str, detail: str) -> bytes:
    body = json.dumps(error_body(status, code, detail)).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: {PROBLEM_JSON}\r\ncontent-length: {len(body)}\r\n"
        "connection: close\r\n"
    )
    if status == 503:
        head += "retry-after: 1\r\n"
    return head.encode() + b"\r\n" + body


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    limits = EdgeLimits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._refused = False  # closed by a limit: ignore whatever else arrives
        self._reading_headers = False
        self._header_bytes = 0  # of the request line and headers parsed so far
        self._unfinished_bytes = 0  # received since the request began, while its headers are still unfinished
        self._header_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._body_started = 0.0
        self._body_bytes = 0

    # -- connections ----------------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.limits.max_connections:
            self._refused = True
            log.warning("refused a connection: %d are open (the cap)", len(self.connections))
            detail = f"The server holds {self.limits.max_connections} connections already; retry shortly."
            transport.write(raw_response(503, "Service Unavailable", "too_many_connections", detail))
            transport.close()
            return
        super().connection_made(transport)
        self._arm_header_timer()  # uvicorn waits forever for a first request's headers

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        if self.transport is None:  # refused in connection_made: uvicorn never saw it
            return
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._body_timer is not None:
            self._body_bytes += len(data)
        super().data_received(data)
        if self._reading_headers and not self._refused:
            # httptools keeps an unfinished header in memory until its end arrives: count what is pending.
            self._unfinished_bytes += len(data)
            self._check_header_size(self._unfinished_bytes)

    def send_400_response(self, msg: str) -> None:
        if not self._refused:
            super().send_400_response(msg)

    # -- parser callbacks -----------------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self._refused:
            return
        super().on_message_begin()
        self._reading_headers = True
        self._header_bytes = self._unfinished_bytes = 0
        if self._header_timer is None:
            self._arm_header_timer()

    def on_url(self, url: bytes) -> None:
        if not self._refused:
            self._header_bytes += len(url)
            super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._refused:
            self._header_bytes += len(name) + len(value) + 4  # ": " and CRLF
            super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._refused:
            return
        self._check_header_size(self._header_bytes)
        if self._refused:
            return
        self._reading_headers = False
        self._cancel(self._header_timer)
        self._header_timer = None
        super().on_headers_complete()
        self._body_started, self._body_bytes = time.monotonic(), 0
        self._body_timer = self.loop.call_later(self.limits.body_timeout_s, self._body_deadline)

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._cancel(self._body_timer)
        self._body_timer = None
        if not self._refused:
            super().on_message_complete()

    # -- limits ---------------------------------------------------------------------------------------------
    def _check_header_size(self, size: int) -> None:
        if size > self.limits.header_max_bytes:
            detail = f"The request line and headers are larger than the {self.limits.header_max_bytes:,}-byte cap."
            self._refuse(431, "Request Header Fields Too Large", "header_too_large", detail)

    def _arm_header_timer(self) -> None:
        self._header_timer = self.loop.call_later(self.limits.header_timeout_s, self._header_deadline)

    def _header_deadline(self) -> None:
        self._header_timer = None
        if self._reading_headers:
            detail = f"The request headers did not arrive within {self.limits.header_timeout_s:g} s."
            self._refuse(408, "Request Timeout", "request_timeout", detail)
        elif self.cycle is None:  # a connection that never sent a byte
            self._refused = True
            self.transport.close()

    def _body_deadline(self) -> None:
        self._body_timer = None
        elapsed = time.monotonic() - self._body_started
        allowed = self.limits.body_timeout_s + self._body_bytes / self.limits.body_min_rate
        if elapsed < allowed:  # steady enough so far: check again when the allowance runs out
            self._body_timer = self.loop.call_later(allowed - elapsed, self._body_deadline)
            return
        detail = (
            f"The request body arrived too slowly ({self._body_bytes:,} bytes in {elapsed:.0f} s; "
            f"at least {self.limits.body_min_rate:,} bytes/s after the first {self.limits.body_timeout_s:g} s)."
        )
        self._refuse(408, "Request Timeout", "request_timeout", detail)

    def _refuse(self, status: int, reason: str, code: str, detail: str) -> None:
        """Answer ``status`` (unless the app has started its own answer) and close the connection."""
        self._refused = True
        self._cancel_timers()
        log.warning("closing a connection from %s: %s", self.client, detail)
        if self.cycle is None or not self.cycle.response_started:
            self.transport.write(raw_response(status, reason, code, detail))
        self.transport.close()

    def _cancel_timers(self) -> None:
        self._cancel(self._header_timer)
        self._cancel(self._body_timer)
        self._header_timer = self._body_timer = None

    @staticmethod
    def _cancel(timer: asyncio.TimerHandle | None) -> None:
        if timer is not None:
            timer.cancel()
