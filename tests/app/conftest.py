"""Fixtures for the service: a real gallery index of the synthetic shapes, built with the tiny checkpoint,
and a TestClient that runs the lifespan and waits until the service is ready."""

from __future__ import annotations

import hashlib
import io
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.main import create_app
from app.serve_cli import uvicorn_config
from app.settings import Settings
from index import NewItem
from index.backend import create_empty_gallery, open_gallery
from model.core.images import load_image
from model.inference.embedder import Embedder


def png_bytes(image: Image.Image, fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


@pytest.fixture
def embedder(tiny_checkpoint: Path) -> Embedder:
    # The reference PyTorch path: what the service runs with IMGSIM_ENGINE=torch (the tests' setting).
    return Embedder(tiny_checkpoint, device="cpu", engine="torch")


@pytest.fixture
def gallery_files(synthetic_gallery: Path) -> list[Path]:
    return sorted(synthetic_gallery.glob("*/*.png"))


BACKENDS = ["faiss", "milvus-lite"]
# Put on a gallery test: it runs on the FAISS gallery and on Milvus (Milvus Lite in tmp_path).
on_both_backends = pytest.mark.parametrize("gallery_backend", BACKENDS, indirect=True)


@pytest.fixture
def gallery_backend(request: pytest.FixtureRequest) -> str:
    """The gallery's backend: FAISS unless a test asks for both (``on_both_backends``)."""
    return str(getattr(request, "param", "faiss"))


@pytest.fixture
def index_dir(
    tmp_path: Path, synthetic_gallery: Path, gallery_files: list[Path], embedder: Embedder, gallery_backend: str
) -> Path:
    """A real gallery holding every synthetic image, embedded by the tiny model: a FAISS folder, or a Milvus
    Lite file (``*.db``) for the Milvus backend."""
    path = tmp_path / ("index" if gallery_backend == "faiss" else "index.db")
    ckpt = embedder.checkpoint
    gi = create_empty_gallery(
        path,
        model_hash=ckpt.hash,
        backbone=ckpt.config.backbone,
        dim=embedder.dim,
        gallery_root=synthetic_gallery,
    )
    images = [load_image(p) for p in gallery_files]
    items = [
        NewItem(
            str(p.relative_to(synthetic_gallery)),
            p.parent.name,
            hashlib.sha256(p.read_bytes()).hexdigest(),
            im.width,
            im.height,
        )
        for p, im in zip(gallery_files, images, strict=True)
    ]
    gi.add(embedder.embed_images(images), items)
    gi.compact()
    gi.close()  # the service's gallery becomes the writer at its first change
    return path


def media_dir_of(index: Path) -> Path:
    """Where the service stores the uploads of the gallery at ``index``."""
    gallery = open_gallery(index)
    try:
        return gallery.media_dir
    finally:
        gallery.close()


@pytest.fixture
def settings(tiny_checkpoint: Path, index_dir: Path) -> Settings:
    return Settings(
        checkpoint=tiny_checkpoint, index=index_dir, device="cpu", engine="torch", batch_max_wait_ms=2.0, _env_file=None
    )  # type: ignore[call-arg]


def problem_of(r: httpx.Response) -> dict[str, str]:
    """The ``{code, detail}`` of an error answer, once its RFC 9457 problem document (media type, type, title,
    status) is checked: tests then compare whole bodies with that."""
    from http import HTTPStatus

    assert r.headers["content-type"] == "application/problem+json", r.headers
    body = r.json()
    assert body.keys() == {"type", "title", "status", "code", "detail"}, body
    assert (body["type"], body["title"], body["status"]) == (
        "about:blank",
        HTTPStatus(r.status_code).phrase,
        r.status_code,
    )
    return {"code": body["code"], "detail": body["detail"]}


def wait_ready(client: TestClient, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = client.get("/readyz")
        if r.status_code == 200:
            return
        if r.json().get("code") == "load_failed":
            raise AssertionError(r.text)
        time.sleep(0.02)
    raise AssertionError("the service did not become ready")


@contextmanager
def running(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        yield client


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with running(settings) as c:
        yield c


@pytest.fixture
def make_client() -> Callable[[Settings], object]:
    return running


def ground_truth(embedder: Embedder, data: bytes) -> np.ndarray:
    """The embedding computed in-process, without the service: what every endpoint must agree with."""
    image = load_image(data, draft_size=embedder.preset.resize_size)
    vec: np.ndarray = embedder.embed_images([image])[0]
    return vec


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def live_server(settings: Settings, log_level: str = "warning") -> Iterator[str]:
    """The app under a real uvicorn in a thread, configured as ``imgsim serve`` does (the HTTP edge limits of
    app.http_guard included), on a free loopback port; yields its base URL."""
    import uvicorn

    port = free_port()
    settings = settings.model_copy(update={"host": "127.0.0.1", "port": port})
    server = uvicorn.Server(uvicorn_config(create_app(settings), settings, log_level=log_level))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "live server not ready"
            time.sleep(0.05)
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=15)
