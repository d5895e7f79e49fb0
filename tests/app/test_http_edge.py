"""Issue 15 item 5: limits at the HTTP edge, each against a real uvicorn on loopback (configured as
``imgsim serve``), over raw sockets so that a test can send half a request and watch what the server does."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager

import httpx
import numpy as np
from PIL import Image

from app.settings import Settings
from bench.http_load import multipart_request
from tests.app.conftest import live_server, png_bytes
from tests.conftest import draw_shape

IMAGE = png_bytes(draw_shape("blue_triangles", np.random.default_rng(2)))
NOISE = png_bytes(Image.fromarray(np.random.default_rng(3).integers(0, 255, (48, 48, 3), dtype=np.uint8)))
TIGHT = {"header_timeout_s": 1.0, "body_timeout_s": 1.0, "body_min_rate": 2000, "keep_alive_timeout_s": 1}


@contextmanager
def server(settings: Settings, **update: object) -> Iterator[int]:
    with live_server(settings.model_copy(update=update)) as base:
        yield int(base.rsplit(":", 1)[1])


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.settimeout(10)
    return sock


def read_until_closed(sock: socket.socket) -> tuple[int, bytes]:
    """The status and whole answer, once the server has closed the connection (``TimeoutError`` if it does not
    within the socket's timeout)."""
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            return (int(data.split(b" ", 2)[1]) if data else 0), data
        data += chunk


def test_keys_are_checked_before_the_body_is_read(settings: Settings) -> None:
    """An anonymous upload announcing 39 MB gets its 401 after its headers, not after 39 MB, and the connection
    is closed rather than read to the end."""
    with server(settings, api_keys_write=["w"]) as port, closing(connect(port)) as sock:
        head = (
            "POST /v1/gallery HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            f"Content-Length: {39 * 2**20}\r\n\r\n"
        )
        sock.sendall(head.encode() + b"--b\r\n")  # and nothing more of the body
        start = time.monotonic()
        status, answer = read_until_closed(sock)
    assert status == 401 and b'"code":"missing_api_key"' in answer.replace(b" ", b"")
    assert b"connection: close" in answer.lower() and time.monotonic() - start < 5


def test_a_header_block_beyond_the_cap_gets_431_as_it_arrives(settings: Settings) -> None:
    with server(settings, header_max_bytes=16 * 1024) as port, closing(connect(port)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
        for _ in range(20):  # 20 KB of one header value that never ends: refused once past 16 KB
            try:
                sock.sendall(b"a" * 1024)
            except (BrokenPipeError, ConnectionResetError):
                break
            time.sleep(0.01)
        status, answer = read_until_closed(sock)
    assert status == 431 and b"header_too_large" in answer
    with server(settings, header_max_bytes=16 * 1024) as port:
        r = httpx.get(f"http://127.0.0.1:{port}/healthz", headers={"X-Big": "a" * 8000})
        assert r.status_code == 200  # a header block under the cap is fine
        r = httpx.get(f"http://127.0.0.1:{port}/healthz", headers={f"X-{k}": "a" * 1000 for k in range(20)})
        assert r.status_code == 431  # and one over it, arriving whole, is not


def test_a_whole_request_in_one_write_is_not_taken_for_a_large_header(settings: Settings) -> None:
    """Headers and a 40 KB body in one packet (what bench/http_load.py sends): only the headers count."""
    big = png_bytes(Image.fromarray(np.random.default_rng(4).integers(0, 255, (120, 120, 3), dtype=np.uint8)))
    request = multipart_request("/v1/search", "x", [("image", "q.png", big)], {"k": "1"})
    assert len(request) > 40_000
    with server(settings, header_max_bytes=16 * 1024) as port, closing(connect(port)) as sock:
        for _ in range(3):
            sock.sendall(request)
            assert sock.recv(65536).startswith(b"HTTP/1.1 200 "), "refused"


def test_headers_that_do_not_arrive_in_time_get_408(settings: Settings) -> None:
    with server(settings, **TIGHT) as port:
        with closing(connect(port)) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # the blank line never comes
            start = time.monotonic()
            status, answer = read_until_closed(sock)
            assert status == 408 and b"request_timeout" in answer
            assert 0.8 < time.monotonic() - start < 5
        with closing(connect(port)) as idle:  # a connection that never sends a byte is closed as well
            start = time.monotonic()
            assert read_until_closed(idle) == (0, b"") and time.monotonic() - start < 5


def test_a_trickling_body_gets_408_and_a_steady_one_finishes(settings: Settings) -> None:
    request = multipart_request("/v1/search", "x", [("image", "q.png", NOISE)], {"k": "1"})
    head, body = request.split(b"\r\n\r\n", 1)
    with server(settings, **TIGHT) as port:
        with closing(connect(port)) as sock:  # 10 bytes a second: refused after about body_timeout_s
            sock.sendall(head + b"\r\n\r\n")
            start = time.monotonic()
            for k in range(0, 60, 10):
                try:
                    sock.sendall(body[k : k + 10])
                except (BrokenPipeError, ConnectionResetError):
                    break
                time.sleep(1)
            status, answer = read_until_closed(sock)
            assert status == 408 and b"too slowly" in answer
            assert time.monotonic() - start < 6
        with closing(connect(port)) as sock:  # above body_min_rate (2,000 bytes/s) for longer than the timeout
            sock.sendall(head + b"\r\n\r\n")
            step = 1000
            for k in range(0, len(body), step):
                sock.sendall(body[k : k + step])
                time.sleep(0.25)  # 4,000 bytes/s
            assert len(body) / 4000 > TIGHT["body_timeout_s"]
            sock.settimeout(10)
            status = int(sock.recv(65536).split(b" ", 2)[1])
            assert status == 200


def test_idle_keep_alive_connections_close(settings: Settings) -> None:
    with server(settings, **TIGHT) as port, closing(connect(port)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        start = time.monotonic()
        assert sock.recv(65536) == b"" and time.monotonic() - start < 4  # closed after keep_alive_timeout_s


def test_connections_beyond_the_cap_get_503_at_once(settings: Settings) -> None:
    with server(settings, max_connections=4, header_timeout_s=30.0) as port:
        held = [connect(port) for _ in range(4)]
        try:
            time.sleep(0.2)
            with closing(connect(port)) as extra:
                status, answer = read_until_closed(extra)
            assert status == 503 and b"too_many_connections" in answer
            assert b"retry-after: 1" in answer.lower()
        finally:
            for sock in held:
                sock.close()
        time.sleep(0.2)
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200


def test_many_requests_on_one_connection_keep_working(settings: Settings) -> None:
    """The guard's bookkeeping across keep-alive requests: header counts and deadlines start again each time."""
    with server(settings, **TIGHT) as port, httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
        for _ in range(8):
            assert client.post("/v1/search", files={"image": ("q.png", IMAGE)}).status_code == 200
            time.sleep(0.3)
        assert client.get("/healthz", headers={"X-Pad": "a" * 12000}).status_code == 200
