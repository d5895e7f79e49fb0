"""Each endpoint against ground truth computed in-process (the embedder and numpy brute force)."""

from __future__ import annotations

import hashlib
import inspect
import io
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from PIL import Image
from starlette.routing import BaseRoute

import app.service
from app.main import create_app
from app.settings import Settings
from model.inference.embedder import Embedder
from tests.app.conftest import ground_truth, media_dir_of, on_both_backends, png_bytes
from tests.conftest import draw_shape


def brute_force(embedder: Embedder, files: list[Path], query: np.ndarray) -> list[tuple[str, float]]:
    vectors = np.stack([ground_truth(embedder, p.read_bytes()) for p in files])
    d = np.linalg.norm(vectors - query, axis=1)
    order = np.argsort(d, kind="stable")
    return [(files[i].parent.name, float(d[i])) for i in order]


def test_health_ready_metrics_page(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'id="search-file"' in page.text and "cdn" not in page.text.lower()
    assert client.get("/static/app.js").status_code == 200
    client.get("/v1/gallery")
    text = client.get("/metrics").text
    assert 'imgsim_requests_total{method="GET",route="/v1/gallery",status="200"} 1.0' in text
    assert "imgsim_gallery_items 48.0" in text
    assert "imgsim_queue_depth 0.0" in text
    assert "imgsim_request_duration_seconds_bucket" in text and "imgsim_batch_size_bucket" in text


def test_compare_matches_in_process_embeddings(
    client: TestClient, embedder: Embedder, gallery_files: list[Path]
) -> None:
    a, b = gallery_files[0].read_bytes(), gallery_files[-1].read_bytes()
    r = client.post("/v1/compare", files=[("images", ("a.png", a)), ("images", ("b.png", b))])
    assert r.status_code == 200, r.text
    body = r.json()
    ea, eb = ground_truth(embedder, a), ground_truth(embedder, b)
    assert abs(body["dissimilarity"] - float(np.linalg.norm(ea - eb))) < 1e-4
    assert abs(body["similarity"] - float(ea @ eb)) < 1e-4
    assert body["threshold"] == 0.5
    assert body["same"] == (body["dissimilarity"] < 0.5)
    assert body["same_probability"] == pytest.approx(1 / (1 + np.exp(8 * body["dissimilarity"] - 4)), abs=1e-9)
    assert body["model"] == {
        "hash": embedder.checkpoint.hash,
        "backbone": "seed-cnn",
        "embedding_dim": 16,
        "image_size": 64,
        "precision": "fp32",  # the tests' engine torch; a checkpoint without training photos has no int8 anyway
    }
    same = client.post("/v1/compare", files=[("images", ("a.png", a)), ("images", ("c.png", a))]).json()
    assert same["dissimilarity"] < 1e-4 and same["same"] is True and abs(same["similarity"] - 1) < 1e-4


@on_both_backends
def test_search_matches_brute_force(client: TestClient, embedder: Embedder, gallery_files: list[Path]) -> None:
    query = png_bytes(draw_shape("blue_triangles", np.random.default_rng(7)))
    r = client.post("/v1/search", files={"image": ("q.png", query)}, data={"k": "7"})
    assert r.status_code == 200, r.text
    body = r.json()
    expected = brute_force(embedder, gallery_files, ground_truth(embedder, query))[:7]
    assert [h["label"] for h in body["results"]] == [label for label, _ in expected]
    np.testing.assert_allclose([h["distance"] for h in body["results"]], [d for _, d in expected], atol=1e-4)
    for hit in body["results"]:
        assert abs(hit["similarity"] - (1 - hit["distance"] ** 2 / 2)) < 1e-4
        assert hit["image_url"] == f"/v1/gallery/{hit['id']}/image"
    assert body["index_version"] >= 1 and body["took_ms"] > 0
    default = client.post("/v1/search", files={"image": ("q.png", query)}).json()
    assert len(default["results"]) == 5


@on_both_backends
def test_search_label_filter_and_batch(client: TestClient) -> None:
    query = png_bytes(draw_shape("red_circles", np.random.default_rng(3)))
    r = client.post("/v1/search", files={"image": ("q.png", query)}, data={"k": "20", "label": "yellow_bars"})
    assert r.status_code == 200, r.text
    labels = [h["label"] for h in r.json()["results"]]
    assert labels == ["yellow_bars"] * 12  # only 12 of that label exist
    other = png_bytes(draw_shape("green_squares", np.random.default_rng(4)))
    single = [
        client.post("/v1/search", files={"image": ("q", q)}, data={"k": "3"}).json()["results"] for q in (query, other)
    ]
    batch = client.post("/v1/search/batch", files=[("images", ("a", query)), ("images", ("b", other))], data={"k": "3"})
    assert batch.status_code == 200, batch.text
    got = batch.json()["queries"]
    assert [[h["id"] for h in q] for q in got] == [[h["id"] for h in q] for q in single]


@on_both_backends
def test_small_and_large_galleries_are_searched_alike(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """A small gallery is searched on the event loop, a large one in a worker thread: the same answers."""
    query = png_bytes(draw_shape("green_squares", np.random.default_rng(9)))

    def ranked() -> list[tuple[int, float]]:
        r = client.post("/v1/search", files={"image": ("q.png", query)}, data={"k": "10", "label": "green_squares"})
        assert r.status_code == 200, r.text
        return [(h["id"], h["distance"]) for h in r.json()["results"]]

    inline = ranked()
    monkeypatch.setattr(app.service, "INLINE_SEARCH_FLOATS", 0)
    assert ranked() == inline and len(inline) == 10


def _dependency_calls(dependant: Dependant) -> Iterator[Callable[..., object]]:
    for sub in dependant.dependencies:
        if sub.call is not None:
            yield sub.call
        yield from _dependency_calls(sub)


def _api_routes(routes: list[BaseRoute]) -> Iterator[APIRoute]:
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        included = getattr(route, "original_router", None)  # an included router, in recent FastAPI
        if included is not None:
            yield from _api_routes(included.routes)


def test_no_dependency_runs_in_the_thread_pool(settings: Settings) -> None:
    """FastAPI runs a plain ``def`` dependency in its thread pool: a thread hop per request for what reads a few
    attributes. Every dependency of every route is a coroutine (or an object with an async ``__call__``)."""
    routes = list(_api_routes(create_app(settings).routes))
    assert {"/v1/search", "/v1/compare", "/v1/gallery"} <= {r.path for r in routes}
    checked = 0
    for route in routes:
        for call in _dependency_calls(route.dependant):
            method = type(call).__call__  # a class instance such as APIKeyHeader: its __call__
            is_async = inspect.iscoroutinefunction(call) or inspect.iscoroutinefunction(method)
            assert is_async, f"{route.path}: {call} is not async"
            checked += 1
    assert checked > 10


@on_both_backends
def test_similar_excludes_the_item(client: TestClient, embedder: Embedder, gallery_files: list[Path]) -> None:
    item = client.get("/v1/gallery", params={"limit": 1}).json()["items"][0]
    r = client.get(f"/v1/gallery/{item['id']}/similar", params={"k": 4})
    assert r.status_code == 200, r.text
    hits = r.json()["results"]
    assert len(hits) == 4 and item["id"] not in [h["id"] for h in hits]
    own = next(p for p in gallery_files if hashlib.sha256(p.read_bytes()).hexdigest() == item["sha256"])
    expected = brute_force(embedder, gallery_files, ground_truth(embedder, own.read_bytes()))[1:5]
    np.testing.assert_allclose([h["distance"] for h in hits], [d for _, d in expected], atol=1e-4)


@on_both_backends
def test_gallery_list_get_image(client: TestClient) -> None:
    page = client.get("/v1/gallery", params={"offset": 10, "limit": 5}).json()
    assert page["total"] == 48 and len(page["items"]) == 5 and page["offset"] == 10
    assert page["labels"] == {"blue_triangles": 12, "green_squares": 12, "red_circles": 12, "yellow_bars": 12}
    filtered = client.get("/v1/gallery", params={"label": "red_circles", "limit": 100}).json()
    assert filtered["total"] == 12 and {i["label"] for i in filtered["items"]} == {"red_circles"}
    item = page["items"][0]
    assert client.get(f"/v1/gallery/{item['id']}").json() == item
    image = client.get(item["image_url"])
    assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(image.content)).size == (item["width"], item["height"])
    thumb = client.get(item["image_url"], params={"size": 32})
    assert max(Image.open(io.BytesIO(thumb.content)).size) == 32


@on_both_backends
def test_add_search_delete(client: TestClient, index_dir: Path) -> None:
    photo = draw_shape("green_squares", np.random.default_rng(99), size=300)
    upload = png_bytes(photo)
    r = client.post("/v1/gallery", files={"image": ("../../etc/passwd", upload)}, data={"label": " new_label "})
    assert r.status_code == 201, r.text
    item = r.json()
    assert item["created"] is True and item["label"] == "new_label" and item["index_version"] >= 2
    media = media_dir_of(index_dir) / f"{item['sha256']}.jpg"
    assert media.is_file()
    served = client.get(item["image_url"]).content
    assert served != upload and Image.open(io.BytesIO(served)).format == "JPEG"
    hits = client.post("/v1/search", files={"image": ("q", upload)}, data={"k": "1"}).json()["results"]
    assert hits[0]["id"] == item["id"] and hits[0]["distance"] < 1e-4  # embedded from the upload, as queries are
    again = client.post("/v1/gallery", files={"image": ("x.png", upload)}, data={"label": "new_label"})
    assert again.status_code == 200 and again.json()["id"] == item["id"] and again.json()["created"] is False
    other = client.post("/v1/gallery", files={"image": ("x.png", upload)}, data={"label": "other"})
    conflict = (other.status_code, other.json()["code"], other.json()["existing"]["id"])
    assert conflict == (409, "label_conflict", item["id"])
    assert client.get("/v1/gallery").json()["total"] == 49
    gone = client.delete(f"/v1/gallery/{item['id']}")
    assert gone.status_code == 200, gone.text
    assert gone.json() == {"id": item["id"], "deleted": True, "index_version": item["index_version"] + 1}
    assert client.get(f"/v1/gallery/{item['id']}").status_code == 404
    assert not media.exists()
    assert client.get("/v1/gallery").json()["total"] == 48


def test_openapi_has_examples(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    paths = schema["paths"]
    for path in (
        "/v1/compare",
        "/v1/search",
        "/v1/search/batch",
        "/v1/gallery",
        "/v1/gallery/{item_id}",
        "/v1/gallery/{item_id}/image",
        "/v1/gallery/{item_id}/similar",
        "/healthz",
        "/readyz",
        "/metrics",
    ):
        assert path in paths, path
    assert schema["components"]["schemas"]["CompareResponse"]["examples"]
    assert schema["components"]["schemas"]["SearchResponse"]["examples"]
    assert "415" in paths["/v1/search"]["post"]["responses"]
