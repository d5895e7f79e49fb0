"""A full, read-only or failing disk through the service (issue 15.3): a change that cannot be made durable
answers 507 ``storage_full`` or 503 ``storage_unavailable`` with the usual JSON body, is not visible (not
now, not after a restart), and searches keep working."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.settings import Settings
from index import GalleryIndex
from tests.app.conftest import free_port, png_bytes, problem_of, running
from tests.conftest import draw_shape

ROOT = Path(__file__).resolve().parents[2]


def photo(seed: int, size: int = 96) -> bytes:
    return png_bytes(draw_shape("blue_triangles", np.random.default_rng(seed), size=size))


def visible(client: TestClient, query: bytes) -> tuple[object, ...]:
    """What clients see: the listing, the labels, a search's results and the version it reports."""
    listing = client.get("/v1/gallery", params={"limit": 500}).json()
    search = client.post("/v1/search", files={"image": ("q.png", query)}, data={"k": "5"})
    assert search.status_code == 200, search.text
    # Hit ids, not distances: the model's float sums may differ in the last bits between calls (threads).
    hits = [h["id"] for h in search.json()["results"]]
    return [i["id"] for i in listing["items"]], listing["labels"], hits, search.json()["index_version"]


def media_files(index_dir: Path) -> set[str]:
    folder = index_dir / "media"
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


@pytest.mark.parametrize(
    ("call", "code", "status", "body_code"),
    [
        ("pwrite", errno.ENOSPC, 507, "storage_full"),  # the log append
        ("fdatasync", errno.ENOSPC, 507, "storage_full"),  # the log's fsync (delayed allocation)
        ("pwrite", errno.EROFS, 503, "storage_unavailable"),
        ("fdatasync", errno.EIO, 503, "storage_unavailable"),
        ("fsync", errno.ENOSPC, 507, "storage_full"),  # the uploaded image's file (media/)
    ],
)
def test_failed_storage_answers_507_or_503_and_changes_nothing(
    settings: Settings,
    index_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    call: str,
    code: int,
    status: int,
    body_code: str,
) -> None:
    query = photo(1)
    with running(settings) as client:
        kept = client.post("/v1/gallery", files={"image": ("k.png", photo(2))}, data={"label": "kept"})
        assert kept.status_code == 201, kept.text
        before, files = visible(client, query), media_files(index_dir)

        def fail(*args: object) -> None:
            raise OSError(code, os.strerror(code))

        monkeypatch.setattr(os, call, fail)
        added = client.post("/v1/gallery", files={"image": ("n.png", photo(3))}, data={"label": "new"})
        assert added.status_code == status, added.text
        problem = problem_of(added)  # an RFC 9457 problem document, its code and detail
        assert problem["code"] == body_code and "retry" in problem["detail"]
        if status == 503:
            assert added.headers["Retry-After"]
        if call != "fsync":  # the image file is written with fsync: its failure needs no delete to fail
            deleted = client.delete(f"/v1/gallery/{kept.json()['id']}")
            assert (deleted.status_code, deleted.json()["code"]) == (status, body_code), deleted.text
            assert client.get(f"/v1/gallery/{kept.json()['id']}").status_code == 200
        assert visible(client, query) == before  # searches work, and see what they saw before
        assert media_files(index_dir) == files  # no image left behind, none deleted
        monkeypatch.undo()
        again = client.post("/v1/gallery", files={"image": ("n.png", photo(3))}, data={"label": "new"})
        assert again.status_code == 201 and again.json()["index_version"] == before[3] + 1  # type: ignore[operator]
    with running(settings) as client:  # a restart: what was acknowledged, nothing else
        ids, labels, _, version = visible(client, query)
        assert version == before[3] + 1 and labels == {**before[1], "new": 1}  # type: ignore[dict-item]
        assert kept.json()["id"] in ids and again.json()["id"] in ids  # type: ignore[operator]


# The service in its own process under a file-size limit (RLIMIT_FSIZE, SIGXFSZ ignored): the kernel refuses
# the log write that crosses it with EFBIG. Images are small enough to be stored; the log is the file that
# grows until it cannot.
SERVER = textwrap.dedent(
    """
    import resource, signal, sys
    import uvicorn
    from app.main import create_app
    from app.settings import Settings

    limit = int(sys.argv[2])
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    app = create_app(Settings(_env_file=None))
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
    """
)


@pytest.mark.slow
def test_real_file_size_limit_through_the_service(settings: Settings, index_dir: Path, tmp_path: Path) -> None:
    port, limit = free_port(), 6000
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "IMGSIM_CHECKPOINT": str(settings.checkpoint),
        "IMGSIM_INDEX": str(index_dir),
        "IMGSIM_DEVICE": "cpu",
        "IMGSIM_ENGINE": "torch",
    }
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(port), str(limit)], env=env, cwd=tmp_path)
    base = f"http://127.0.0.1:{port}"
    acked: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, "the server died"
            try:
                if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server never became ready"
            time.sleep(0.2)
        failed = None
        for i in range(200):
            r = httpx.post(
                base + "/v1/gallery", files={"image": ("p.png", photo(100 + i, 64))}, data={"label": "full"}, timeout=30
            )
            if r.status_code != 201:
                failed = r
                break
            acked.append(r.json()["id"])
        assert failed is not None and failed.status_code == 507, failed and failed.text
        assert failed.json()["code"] == "storage_full" and "File too large" in failed.json()["detail"]
        search = httpx.post(base + "/v1/search", files={"image": ("q.png", photo(1))}, timeout=30)
        assert search.status_code == 200 and search.json()["index_version"] == 1 + len(acked) + 1
        listing = httpx.get(base + "/v1/gallery", params={"label": "full", "limit": 500}, timeout=30).json()
        assert listing["total"] == len(acked) >= 3
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
    reopened = GalleryIndex.open(index_dir)  # no limit here: exactly what was acknowledged
    assert reopened.labels()["full"] == len(acked) and all(reopened.get(i) is not None for i in acked)
    assert reopened.get(max(acked) + 1) is None
