"""Over real HTTP (uvicorn on loopback): the typed client, sync and async, and SIGTERM draining."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from imgsim_client import ApiError, AsyncClient, Client, CompareResponse, SearchResponse

from app.settings import Settings
from tests.app.conftest import free_port, live_server, png_bytes
from tests.conftest import draw_shape


def test_sync_and_async_client(settings: Settings, gallery_files: list[Path]) -> None:
    query = gallery_files[3]
    with live_server(settings) as base, Client(base) as client:
        assert client.ready()
        found = client.search(query, k=3)
        assert isinstance(found, SearchResponse) and found.results[0].distance < 1e-4
        assert found.results[0].label == query.parent.name
        same = client.compare(query, query.read_bytes())
        assert isinstance(same, CompareResponse) and same.same and same.dissimilarity < 1e-4
        batch = client.search_batch([query, gallery_files[20]], k=2)
        assert [q[0].label for q in batch.queries] == [query.parent.name, gallery_files[20].parent.name]
        item = client.get_item(found.results[0].id)
        assert client.similar(item.id, k=2).results[0].id != item.id
        assert client.get_image(item.id, size=32)[:2] == b"\xff\xd8"
        added = client.add(png_bytes(draw_shape("red_circles", np.random.default_rng(11))), "via_client")
        assert added.created and client.list_items(label="via_client").total == 1
        assert client.relabel(added.id, "renamed").label == "renamed" and client.get_item(added.id).label == "renamed"
        assert client.delete(added.id).deleted
        card = client.model()
        assert card.embedding_dim == len(client.embed([query]).embeddings[0])
        vector = client.embed([query]).embeddings[0]
        assert client.search_vector(vector, k=3).results == found.results
        assert client.search(query, label="poodle").unknown_label == "poodle"
        with pytest.raises(ApiError) as err:
            client.get_item(added.id)
        assert (err.value.status, err.value.code) == (404, "item_not_found")
        with pytest.raises(ApiError) as err:
            client.search(b"not an image")
        assert (err.value.status, err.value.code) == (415, "unsupported_format")

        async def use_async() -> None:
            async with AsyncClient(base) as aclient:
                assert await aclient.ready()
                answers = await asyncio.gather(*(aclient.search(p, k=1) for p in gallery_files[:6]))
                assert [a.results[0].label for a in answers] == [p.parent.name for p in gallery_files[:6]]
                assert (await aclient.compare(query, gallery_files[40])).dissimilarity > 0
                assert (await aclient.list_items(limit=2)).total == 48

        asyncio.run(use_async())


@pytest.mark.slow
def test_sigterm_drains_then_exits(settings: Settings, tmp_path: Path) -> None:
    """``imgsim serve`` in its own process: SIGTERM turns readiness 503 at once, then the process shuts down cleanly."""
    port = free_port()
    env = {**os.environ, "IMGSIM_ENGINE": "torch", "IMGSIM_DRAIN_SECONDS": "1.5"}
    cmd = [
        sys.executable,
        "-m",
        "app.cli",
        "serve",
        "--port",
        str(port),
        "--device",
        "cpu",
        "--checkpoint",
        str(settings.checkpoint),
        "--index",
        str(settings.index),
    ]
    cwd = tmp_path / "cwd"  # not tmp_path: its index/ folder would shadow the index package under ``-m``
    cwd.mkdir()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"server did not start: {proc.communicate()[0].decode()[-2000:]}")
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        r = httpx.get(base + "/readyz", timeout=2)
        assert r.status_code == 503 and r.json()["code"] == "draining"
        assert httpx.get(base + "/healthz", timeout=2).status_code == 200
        # uvicorn finishes in-flight requests and the lifespan, then re-raises the signal (exit -15 / 143).
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
        log = proc.communicate()[0].decode()
        assert "Application shutdown complete" in log, log[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
