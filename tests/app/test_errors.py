"""Every bad input of RELIABILITY.md gets its 4xx, a stable code and a human detail; whole bodies compared."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.settings import Settings
from model.core.images import ImageError, load_image
from tests.app.conftest import png_bytes, problem_of, running
from tests.conftest import draw_shape


def png_header(width: int, height: int) -> bytes:
    """A PNG that only declares its size (a decompression bomb's first 50 bytes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def loader_error(data: bytes) -> ImageError:
    with pytest.raises(ImageError) as info:
        load_image(data, draft_size=73)
    return info.value


GOOD = png_bytes(draw_shape("red_circles", np.random.default_rng(0)))
GOOD_JPEG = png_bytes(draw_shape("red_circles", np.random.default_rng(0)), "JPEG")
BAD_IMAGES = {
    "empty": (b"", 422),
    "text": (b"hello, I am not an image at all", 415),
    "svg": (b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"></svg>', 415),
    "bomb": (png_header(30000, 30000), 422),
    "truncated": (GOOD[: len(GOOD) // 2], 422),
    "truncated_jpeg": (GOOD_JPEG[:-2], 422),  # its header is whole: the fast decoder tries it first
}


@pytest.mark.parametrize("name", sorted(BAD_IMAGES))
def test_bad_images(client: TestClient, name: str) -> None:
    data, status = BAD_IMAGES[name]
    err = loader_error(data)
    r = client.post("/v1/search", files={"image": ("dog.jpg", data, "image/jpeg")})
    assert r.status_code == status, r.text
    assert problem_of(r) == {"code": err.code, "detail": f"image: {err.detail}"}
    assert (
        err.code
        == {
            "empty": "empty_image",
            "text": "unsupported_format",
            "svg": "unsupported_format",
            "bomb": "image_too_large",
            "truncated": "corrupt_image",
            "truncated_jpeg": "corrupt_image",
        }[name]
    )
    r = client.post("/v1/compare", files=[("images", ("a", GOOD)), ("images", ("b", data))])
    assert r.status_code == status and problem_of(r) == {"code": err.code, "detail": f"images[1]: {err.detail}"}


def test_bad_images_with_instances_that_decode(settings: Settings) -> None:
    """The CPU default (ONNX, one instance per core, each decoding its own batch) answers the same 4xx."""
    two = settings.model_copy(update={"engine": "onnx", "model_instances": 2})
    with running(two) as client:
        for name, (data, status) in sorted(BAD_IMAGES.items()):
            err = loader_error(data)
            r = client.post("/v1/search", files={"image": ("dog.jpg", data, "image/jpeg")})
            expected = {"code": err.code, "detail": f"image: {err.detail}"}
            assert (r.status_code, problem_of(r)) == (status, expected), name
            r = client.post("/v1/compare", files=[("images", ("a", GOOD)), ("images", ("b", data))])
            assert r.status_code == status and r.json()["detail"] == f"images[1]: {err.detail}", name
        assert client.post("/v1/search", files={"image": ("a", GOOD)}).status_code == 200


def test_odd_but_valid_images(client: TestClient) -> None:
    for image in (Image.new("RGB", (1, 1), (9, 9, 9)), Image.new("I;16", (20, 20), 40000), Image.new("LA", (9, 9))):
        r = client.post("/v1/search", files={"image": ("x.png", png_bytes(image))})
        assert r.status_code == 200, r.text


def test_request_shape_errors(client: TestClient) -> None:
    def post(url: str, **kw: object) -> tuple[int, dict[str, str]]:
        r = client.post(url, **kw)
        return r.status_code, problem_of(r)

    assert post("/v1/compare", files=[("images", ("a", GOOD))]) == (
        422,
        {"code": "wrong_image_count", "detail": "Send exactly two images; got 1."},
    )
    assert post("/v1/compare", files=[("images", ("a", GOOD))] * 3) == (
        422,
        {"code": "wrong_image_count", "detail": "Send exactly two images; got 3."},
    )
    assert post("/v1/search", data={"k": "3"}) == (422, {"code": "invalid_request", "detail": "image: Field required"})
    assert post("/v1/search", files={"image": ("a", GOOD)}, data={"k": "0"}) == (
        422,
        {"code": "invalid_request", "detail": "k: Input should be greater than or equal to 1"},
    )
    assert post("/v1/search", files={"image": ("a", GOOD)}, data={"k": "101"}) == (
        422,
        {"code": "invalid_request", "detail": "k: Input should be less than or equal to 100"},
    )
    assert post("/v1/search/batch", files=[("images", ("a", GOOD))] * 17) == (
        422,
        {"code": "too_many_images", "detail": "Send at most 16 images; got 17."},
    )
    assert post("/v1/gallery", files={"image": ("a", GOOD)}, data={"label": "   "}) == (
        422,
        {"code": "invalid_label", "detail": "The label must be non-empty printable text."},
    )
    assert post("/v1/search", files={"image": ("a", GOOD)}, data={"k": ""}) == (
        422,
        {"code": "invalid_request", "detail": "k: Input should be a valid integer, not empty"},
    )
    assert post("/v1/search/batch", files={"images": ("a", GOOD)}, data={"k": ""})[0] == 422
    assert post("/v1/search", files=[("image", ("a", GOOD)), ("image", ("b", GOOD_JPEG))]) == (
        422,
        {"code": "wrong_image_count", "detail": "Send exactly 1 image in 'image'; got 2."},
    )
    two = [("image", ("a", GOOD)), ("image", ("b", GOOD_JPEG))]
    assert post("/v1/gallery", files=two, data={"label": "x"})[1]["code"] == "wrong_image_count"
    r = client.post("/v1/search", content=b"--x\r\nbroken", headers={"content-type": "multipart/form-data"})
    assert r.status_code == 400 and r.json()["code"] == "bad_request"
    assert problem_of(client.get("/nope")) == {"code": "not_found", "detail": "Not Found"}
    r = client.put("/v1/compare")
    assert r.status_code == 405 and problem_of(r) == {"code": "method_not_allowed", "detail": "Method Not Allowed"}
    r = client.get("/v1/gallery/0/image", params={"size": 5})
    assert r.status_code == 422 and r.json()["code"] == "invalid_request"


def test_missing_items(client: TestClient) -> None:
    body = {"code": "item_not_found", "detail": "No gallery item with id 999999."}
    for method, url in (
        ("GET", "/v1/gallery/999999"),
        ("GET", "/v1/gallery/999999/image"),
        ("GET", "/v1/gallery/999999/similar"),
        ("DELETE", "/v1/gallery/999999"),
    ):
        r = client.request(method, url)
        assert (r.status_code, problem_of(r)) == (404, body), url


def test_stored_image_missing_on_disk(client: TestClient, synthetic_gallery: Path) -> None:
    item = client.get("/v1/gallery", params={"limit": 1}).json()["items"][0]
    service = client.app.state.runtime.service  # type: ignore[attr-defined]
    (synthetic_gallery / service.index.get(item["id"]).path).unlink()
    r = client.get(item["image_url"])
    assert (r.status_code, problem_of(r)) == (
        404,
        {"code": "image_not_found", "detail": f"The image file of item {item['id']} is missing on the server."},
    )


def test_size_caps(settings: Settings) -> None:
    capped = settings.model_copy(update={"max_upload_bytes": 1000, "max_body_bytes": 50_000})
    with running(capped) as client:
        r = client.post("/v1/search", files={"image": ("a", b"\xff" * 2000)})
        assert (r.status_code, problem_of(r)) == (
            413,
            {"code": "payload_too_large", "detail": "The upload is larger than the 1,000-byte cap."},
        )
        r = client.post("/v1/search", files={"image": ("a", b"\xff" * 60_000)})
        assert (r.status_code, problem_of(r)) == (
            413,
            {"code": "payload_too_large", "detail": "The request body is larger than the 50,000-byte cap."},
        )

        def chunks() -> object:
            yield b'--b\r\nContent-Disposition: form-data; name="image"; filename="a"\r\n\r\n'
            for _ in range(10):
                yield b"\xff" * 10_000

        r = client.post(
            "/v1/search",
            content=chunks(),
            headers={"content-type": "multipart/form-data; boundary=b"},
        )
        assert r.status_code == 413 and r.json()["code"] == "payload_too_large"


def test_nan_embedding_is_422(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    service = client.app.state.runtime.service  # type: ignore[attr-defined]
    monkeypatch.setattr(
        service.embedder, "embed_tensors", lambda batch: np.full((len(batch), 16), np.nan, dtype=np.float32)
    )
    r = client.post("/v1/search", files={"image": ("a", GOOD)})
    assert (r.status_code, problem_of(r)) == (
        422,
        {"code": "invalid_embedding", "detail": "The model produced a non-finite embedding for this image."},
    )


def test_full_queue_is_refused_at_once(client: TestClient) -> None:
    service = client.app.state.runtime.service  # type: ignore[attr-defined]
    with service.batcher.admit(service.settings.queue_max):
        r = client.post("/v1/search", files={"image": ("a", GOOD)})
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert problem_of(r) == {
            "code": "overloaded",
            "detail": "Too busy: 128 images are queued; the queue holds 128. Retry shortly.",
        }
        assert client.get("/healthz").status_code == 200 and client.get("/readyz").status_code == 200
        assert client.get("/metrics").status_code == 200
    assert client.post("/v1/search", files={"image": ("a", GOOD)}).status_code == 200
    assert "imgsim_rejected_total 1.0" in client.get("/metrics").text


def test_not_ready_when_loading_fails(settings: Settings, tmp_path: Path) -> None:
    broken = settings.model_copy(update={"checkpoint": tmp_path / "missing.pt"})
    from fastapi.testclient import TestClient as Client

    from app.main import create_app

    with Client(create_app(broken)) as client:
        for _ in range(200):
            r = client.get("/readyz")
            if r.json()["code"] == "load_failed":
                break
            import time

            time.sleep(0.02)
        assert r.status_code == 503 and "does not exist" in r.json()["detail"]
        r = client.post("/v1/search", files={"image": ("a", GOOD)})
        assert r.status_code == 503 and r.json()["code"] == "not_ready"
        assert client.get("/healthz").status_code == 200
