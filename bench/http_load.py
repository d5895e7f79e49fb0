"""A lean HTTP/1.1 load generator for the service benchmark, in the manner of wrk: requests are built once as
bytes, each of ``concurrency`` keep-alive connections sends one and reads its answer, again and again.

The service and its load generator share this machine's two cores, so every CPU millisecond the client
spends is taken from the server: httpx's client costs about 1.7 ms per request here, this one a small
fraction of that (``client_cpu_ms`` reports it). Answers must be ``200`` with a ``Content-Length`` body,
which is what uvicorn sends for JSON.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass


def multipart_request(path: str, host: str, files: list[tuple[str, str, bytes]], fields: dict[str, str]) -> bytes:
    """A complete ``POST`` request with a ``multipart/form-data`` body: (field, filename, data) per file."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, filename, data in files:
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        )
        parts.append(head.encode() + data + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


@dataclass
class LoadResult:
    seconds: float
    latencies: list[float]  # one per request, seconds
    client_cpu_ms: float  # this process's CPU time per request


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
        elif name.strip().lower() == "transfer-encoding":
            raise RuntimeError("chunked answers are not supported by this load generator")
    return status, await reader.readexactly(length)


async def run_load(host: str, port: int, requests: list[bytes], concurrency: int, total: int) -> LoadResult:
    """Send ``total`` requests (cycling through ``requests``) over ``concurrency`` connections."""
    latencies: list[float] = []
    counter = iter(range(total))

    async def connection() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            for i in counter:
                start = time.perf_counter()
                writer.write(requests[i % len(requests)])
                status, body = await _read_response(reader)
                latencies.append(time.perf_counter() - start)
                if status != 200:
                    raise RuntimeError(f"request {i}: HTTP {status} {body[:200]!r}")
        finally:
            writer.close()

    cpu0, start = time.process_time(), time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(concurrency)))
    seconds = time.perf_counter() - start
    return LoadResult(seconds, latencies, 1000 * (time.process_time() - cpu0) / max(total, 1))
