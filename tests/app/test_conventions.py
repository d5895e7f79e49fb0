"""What integrators expect, each against the real service: RFC 9457 errors documented as they are sent,
``Authorization: Bearer``, CORS off unless configured, ``X-Request-ID`` echoed and logged, ETag and 304 on
stored images, ``GET /v1/model``, ``POST /v1/embed`` and search by vector, ``score_threshold``, and an unknown
label answered as such."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.request_id import RequestIdFilter
from app.settings import Settings
from model.inference.embedder import Embedder
from tests.app.conftest import ground_truth, live_server, on_both_backends, problem_of, running


def test_the_schema_documents_the_real_error_body(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    assert set(schema["components"]["schemas"]["Problem"]["required"]) == {"title", "status", "code", "detail"}
    documented = 0
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            for status, response in operation["responses"].items():
                if status[0] in "45":
                    content = response["content"]
                    assert list(content) == ["application/problem+json"], (method, path, status)
                    assert content["application/problem+json"]["schema"] == {"$ref": "#/components/schemas/Problem"}
                    documented += 1
            params = operation.get("parameters") or operation.get("requestBody")
            if params and path.startswith("/v1"):
                assert "422" in operation["responses"], (method, path)  # what a bad parameter really gets
    assert documented > 30
    r = client.get("/v1/gallery", params={"limit": 0})  # one of the five routes that documented FastAPI's body
    assert (r.status_code, problem_of(r)["code"]) == (422, "invalid_request")


def test_bearer_is_the_same_key(settings: Settings) -> None:
    secured = settings.model_copy(update={"api_keys_read": ["read-1"], "api_keys_write": ["write-1"]})
    with running(secured) as client:
        assert client.get("/v1/gallery", headers={"Authorization": "Bearer read-1"}).status_code == 200
        assert client.get("/v1/gallery", headers={"Authorization": "bearer  read-1 "}).status_code == 200
        r = client.get("/v1/gallery", headers={"Authorization": "Bearer nope"})
        assert (r.status_code, problem_of(r)["code"]) == (401, "invalid_api_key")
        r = client.get("/v1/gallery", headers={"Authorization": "Basic cmVhZC0xOg=="})
        assert (r.status_code, problem_of(r)["code"]) == (401, "missing_api_key")
        r = client.delete("/v1/gallery/0", headers={"Authorization": "Bearer read-1"})
        assert (r.status_code, problem_of(r)["code"]) == (403, "insufficient_scope")
        assert client.delete("/v1/gallery/0", headers={"Authorization": "Bearer write-1"}).status_code == 200
    schemes = create_app(secured).openapi()["components"]["securitySchemes"]
    assert {s["type"] for s in schemes.values()} == {"apiKey", "http"}


def test_cors_is_off_by_default_and_on_for_the_origins_named(settings: Settings) -> None:
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    with running(settings) as client:
        r = client.options("/v1/search", headers=preflight)
        assert "access-control-allow-origin" not in r.headers
        assert (
            "access-control-allow-origin"
            not in client.get("/v1/gallery", headers={"Origin": "https://app.example"}).headers
        )
    allowed = settings.model_copy(update={"cors_origins": ["https://app.example"], "api_keys_read": ["k"]})
    with running(allowed) as client:
        r = client.options("/v1/search", headers={**preflight, "Access-Control-Request-Headers": "authorization"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example"
        assert "authorization" in r.headers["access-control-allow-headers"].lower()
        r = client.get("/v1/gallery", headers={"Origin": "https://app.example"})  # refused, but readable by the page
        assert r.status_code == 401 and r.headers["access-control-allow-origin"] == "https://app.example"
        assert "x-request-id" in r.headers["access-control-expose-headers"].lower()
        r = client.options("/v1/search", headers={**preflight, "Origin": "https://evil.example"})
        assert r.status_code == 400 and "access-control-allow-origin" not in r.headers


def test_cors_origins_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMGSIM_CORS_ORIGINS", "https://a.example, https://b.example")
    assert Settings(_env_file=None).cors_origins == ["https://a.example", "https://b.example"]  # type: ignore[call-arg]


def test_request_id_is_read_or_made_echoed_and_logged(settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    with running(settings) as client:
        assert client.get("/healthz", headers={"X-Request-ID": "abc-123"}).headers["x-request-id"] == "abc-123"
        made = client.get("/healthz").headers["x-request-id"]
        assert len(made) == 32 and made != client.get("/healthz").headers["x-request-id"]
        forged = client.get("/healthz", headers={"X-Request-ID": "x\tINFO fake line"}).headers["x-request-id"]
        assert len(forged) == 32 and "fake" not in forged  # not a sane token: replaced
        r = client.get("/v1/gallery/999999", headers={"X-Request-ID": "err-1"})  # errors carry it too
        assert (r.status_code, r.headers["x-request-id"]) == (404, "err-1")
        caplog.handler.addFilter(RequestIdFilter())  # as `imgsim` puts it on its handlers
        service = client.app.state.runtime.service  # type: ignore[attr-defined]
        index, service.index = service.index, None  # make the next one fail
        try:
            with caplog.at_level(logging.ERROR, logger="app.request_id"):
                r = client.get("/v1/gallery", headers={"X-Request-ID": "boom-7"})
        finally:
            service.index = index  # the shutdown closes (and compacts) it
        assert r.status_code == 500 and r.headers["x-request-id"] == "boom-7"
        assert [rec.request_id for rec in caplog.records if rec.name == "app.request_id"] == ["boom-7"]  # type: ignore[attr-defined]


def test_access_log_lines_carry_the_request_id(settings: Settings) -> None:
    """Under uvicorn as `imgsim serve` runs it: the access line of a request shows its id."""
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(f"{record.getMessage()} request_id={getattr(record, 'request_id', None)}")

    with live_server(settings, log_level="info") as base:
        access = logging.getLogger("uvicorn.access")
        keep = Keep()
        access.addHandler(keep)
        try:
            httpx.get(base + "/healthz", headers={"X-Request-ID": "trace-42"})
        finally:
            access.removeHandler(keep)
    assert any('"GET /healthz HTTP/1.1" 200 request_id=trace-42' in line for line in lines), lines


@on_both_backends
def test_stored_images_have_an_etag_and_answer_304(client: TestClient) -> None:
    item = client.get("/v1/gallery", params={"limit": 1}).json()["items"][0]
    url = f"/v1/gallery/{item['id']}/image"
    r = client.get(url)
    tag = r.headers["etag"]
    assert r.status_code == 200 and r.content[:2] == b"\xff\xd8" and tag.startswith('"')
    assert "max-age" in r.headers["cache-control"]
    again = client.get(url, headers={"If-None-Match": tag})
    assert (again.status_code, again.content, again.headers["etag"]) == (304, b"", tag)
    assert client.get(url, headers={"If-None-Match": f'"other", W/{tag}'}).status_code == 304
    assert client.get(url, headers={"If-None-Match": '"other"'}).status_code == 200
    thumb = client.get(url, params={"size": 32})
    assert thumb.headers["etag"] != tag  # another rendering, another tag
    assert client.get(url, params={"size": 32}, headers={"If-None-Match": tag}).status_code == 200
    assert client.get("/v1/gallery/999999/image", headers={"If-None-Match": "*"}).status_code == 404


def test_model_card(client: TestClient, embedder: Embedder) -> None:
    card = client.get("/v1/model").json()
    ckpt = embedder.checkpoint
    assert card == {
        "hash": ckpt.hash,
        "backbone": ckpt.config.backbone,
        "embedding_dim": embedder.dim,
        "image_size": ckpt.config.image_size,
        "threshold": ckpt.threshold,
        "engine": "torch",
        "device": "cpu",
        "precision": embedder.precision,  # what the gallery's vectors are computed in (fp32 on the torch engine)
        "distance": "euclidean",
    }


@on_both_backends
def test_embed_then_search_by_vector_equals_search_by_photo(
    client: TestClient, embedder: Embedder, gallery_files: list[Path]
) -> None:
    a, b = gallery_files[3].read_bytes(), gallery_files[30].read_bytes()
    r = client.post("/v1/embed", files=[("images", ("a.png", a)), ("images", ("b.png", b))])
    assert r.status_code == 200, r.text
    vectors = np.array(r.json()["embeddings"])
    assert vectors.shape == (2, embedder.dim)
    assert np.allclose(vectors, np.stack([ground_truth(embedder, a), ground_truth(embedder, b)]), atol=1e-5)
    by_photo = client.post("/v1/search", files={"image": ("a.png", a)}, data={"k": "7"}).json()["results"]
    by_vector = client.post("/v1/search/vector", json={"vector": (vectors[0] * 3).tolist(), "k": 7}).json()
    assert [h["id"] for h in by_vector["results"]] == [h["id"] for h in by_photo]  # scaled: same unit vector
    assert np.allclose([h["distance"] for h in by_vector["results"]], [h["distance"] for h in by_photo], atol=1e-5)
    for body, code in (
        ({"vector": [0.1] * (embedder.dim + 1)}, "wrong_dimension"),
        ({"vector": [0.0] * embedder.dim}, "invalid_vector"),
        ({"vector": [0.1] * embedder.dim, "k": 0}, "invalid_request"),
    ):
        r = client.post("/v1/search/vector", json=body)
        assert (r.status_code, problem_of(r)["code"]) == (422, code)
    r = client.post("/v1/embed", files=[("images", ("x.txt", b"not an image"))])
    assert (r.status_code, problem_of(r)["code"]) == (415, "unsupported_format")


@on_both_backends
def test_score_threshold_keeps_only_results_within_the_distance(client: TestClient, gallery_files: list[Path]) -> None:
    photo = {"image": ("q.png", gallery_files[5].read_bytes())}
    everything = client.post("/v1/search", files=photo, data={"k": "20"}).json()["results"]
    cut = everything[9]["distance"]
    within = client.post("/v1/search", files=photo, data={"k": "20", "score_threshold": str(cut)}).json()["results"]
    assert within == [h for h in everything if h["distance"] <= cut] and 10 <= len(within) < 20
    item = everything[0]["id"]
    similar = client.get(f"/v1/gallery/{item}/similar", params={"k": 20, "score_threshold": cut}).json()["results"]
    assert similar and all(h["distance"] <= cut for h in similar)
    r = client.post("/v1/search", files=photo, data={"score_threshold": "-1"})
    assert (r.status_code, problem_of(r)["code"]) == (422, "invalid_request")


@on_both_backends
def test_an_unknown_label_is_answered_with_the_known_ones(client: TestClient, gallery_files: list[Path]) -> None:
    photo = {"image": ("q.png", gallery_files[5].read_bytes())}
    known = ["blue_triangles", "green_squares", "red_circles", "yellow_bars"]
    body = client.post("/v1/search", files=photo, data={"label": "poodle"}).json()
    assert (body["results"], body["unknown_label"], body["known_labels"]) == ([], "poodle", known)
    body = client.post("/v1/search", files=photo, data={"label": "red_circles"}).json()
    assert body["results"] and body["unknown_label"] is None and body["known_labels"] is None
    first = client.get("/v1/gallery", params={"limit": 1}).json()["items"][0]["id"]  # 0 on FAISS, not on Milvus
    body = client.get(f"/v1/gallery/{first}/similar", params={"label": "Red_Circles"}).json()
    assert body["unknown_label"] == "Red_Circles" and body["known_labels"] == known
    page = client.get("/v1/gallery", params={"label": "poodle"}).json()
    assert (page["items"], page["unknown_label"]) == ([], "poodle") and list(page["labels"]) == known


def test_favicon_and_offline_docs_assets(client: TestClient) -> None:
    assert client.get("/favicon.ico").headers["content-type"] == "image/svg+xml"
    docs = client.get("/docs").text
    assert "/docs/assets/swagger-ui-bundle.js" in docs and "cdn" not in docs.lower() and "https://" not in docs
    assert client.get("/docs/assets/swagger-ui-bundle.js").status_code == 200
    assert client.get("/docs/assets/swagger-ui.css").status_code == 200
    assert client.get("/redoc").status_code == 404  # not offered: it would need a CDN


@on_both_backends
def test_the_same_image_with_another_label_is_a_conflict_not_silence(
    client: TestClient, gallery_files: list[Path]
) -> None:
    photo = gallery_files[7]  # in the gallery already, under its folder's label
    data = photo.read_bytes()
    same = client.post("/v1/gallery", files={"image": ("a.png", data)}, data={"label": photo.parent.name})
    assert same.status_code == 200 and same.json()["created"] is False and same.json()["label"] == photo.parent.name
    r = client.post("/v1/gallery", files={"image": ("a.png", data)}, data={"label": "poodle"})
    body = r.json()
    assert (r.status_code, r.headers["content-type"], body["code"]) == (
        409,
        "application/problem+json",
        "label_conflict",
    )
    assert body["existing"]["label"] == photo.parent.name and body["existing"]["sha256"] == same.json()["sha256"]
    assert client.get(f"/v1/gallery/{body['existing']['id']}").json()["label"] == photo.parent.name  # unchanged
    assert client.get("/v1/gallery", params={"label": "poodle"}).json()["total"] == 0


@on_both_backends
def test_patch_relabels_durably_and_then_the_image_can_be_added_under_its_new_label(
    settings: Settings, gallery_files: list[Path]
) -> None:
    photo = gallery_files[2]
    write = settings.model_copy(update={"api_keys_read": ["r"], "api_keys_write": ["w"]})
    with running(write) as client:
        added = client.post(
            "/v1/gallery", files={"image": ("a.png", photo.read_bytes())}, data={"label": photo.parent.name},
            headers={"X-API-Key": "w"},
        ).json()  # fmt: skip
        item = added["id"]
        r = client.patch(f"/v1/gallery/{item}", json={"label": " beagle "}, headers={"Authorization": "Bearer w"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["id"], body["label"], body["sha256"]) == (item, "beagle", added["sha256"])
        assert body["index_version"] > added["index_version"]
        again = client.post(
            "/v1/gallery", files={"image": ("a.png", photo.read_bytes())}, data={"label": "beagle"},
            headers={"X-API-Key": "w"},
        )  # fmt: skip
        assert (again.status_code, again.json()["id"], again.json()["created"]) == (200, item, False)
        hits = client.post("/v1/search", files={"image": ("q.png", photo.read_bytes())}, data={"label": "beagle"},
                           headers={"X-API-Key": "r"}).json()["results"]  # fmt: skip
        assert hits[0]["id"] == item and hits[0]["distance"] < 1e-4
        for change, headers, status, code in (
            ({"label": "x"}, {"X-API-Key": "r"}, 403, "insufficient_scope"),
            ({"label": "  "}, {"X-API-Key": "w"}, 422, "invalid_label"),
            ({"label": ""}, {"X-API-Key": "w"}, 422, "invalid_request"),
            ({}, {"X-API-Key": "w"}, 422, "invalid_request"),
        ):
            r = client.patch(f"/v1/gallery/{item}", json=change, headers=headers)
            assert (r.status_code, problem_of(r)["code"]) == (status, code), change
        r = client.patch("/v1/gallery/999999", json={"label": "x"}, headers={"X-API-Key": "w"})
        assert (r.status_code, problem_of(r)["code"]) == (404, "item_not_found")
    with running(write) as client:  # a new process: the relabel was durable
        assert client.get(f"/v1/gallery/{item}", headers={"X-API-Key": "r"}).json()["label"] == "beagle"


def test_a_second_label_is_refused_under_the_add_lock_too(
    client: TestClient, gallery_files: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two adds of one image with two labels race past the route's early check; the add itself refuses."""
    import app.routes.gallery as gallery_routes

    monkeypatch.setattr(gallery_routes, "_refuse_a_second_label", lambda *args: None)  # the race lost
    photo = gallery_files[5]
    r = client.post("/v1/gallery", files={"image": ("a.png", photo.read_bytes())}, data={"label": "poodle"})
    body = r.json()
    assert (r.status_code, body["code"], body["existing"]["label"]) == (409, "label_conflict", photo.parent.name)
    assert client.get("/v1/gallery", params={"label": "poodle"}).json()["total"] == 0
