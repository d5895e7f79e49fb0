"""bench/http_load.py, the service benchmark's load generator, against a real server: its requests are valid
multipart forms, every answer is read whole, and a failed request is an error, not a number."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from app.settings import Settings
from bench.http_load import multipart_request, run_load
from tests.app.conftest import live_server


def test_lean_client_drives_search_and_compare(settings: Settings, gallery_files: list[Path]) -> None:
    images = [p.read_bytes() for p in gallery_files[:3]]
    with live_server(settings) as base:
        url = httpx.URL(base)
        assert url.port is not None
        host, port = url.host, url.port
        search = [multipart_request("/v1/search", host, [("image", "q.png", im)], {"k": "2"}) for im in images]
        result = asyncio.run(run_load(host, port, search, concurrency=3, total=9))
        assert len(result.latencies) == 9 and all(t > 0 for t in result.latencies)
        assert result.client_cpu_ms >= 0
        pair = [("images", "a.png", images[0]), ("images", "b.png", images[1])]
        compare = [multipart_request("/v1/compare", host, pair, {})]
        assert len(asyncio.run(run_load(host, port, compare, concurrency=2, total=4)).latencies) == 4
        bad = [multipart_request("/v1/search", host, [("image", "q.png", b"not an image")], {})]
        with pytest.raises(RuntimeError, match="HTTP 4"):
            asyncio.run(run_load(host, port, bad, concurrency=1, total=1))
