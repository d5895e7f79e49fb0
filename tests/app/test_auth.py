"""Optional API keys: read and write scopes, 401 with WWW-Authenticate, 403 for a read key on a write route."""

from __future__ import annotations

import numpy as np
import pytest

from app.auth import require_metrics, require_read, require_write, required_scope
from app.main import create_app
from app.settings import Settings
from tests.app.conftest import png_bytes, problem_of, running
from tests.app.test_endpoints import _api_routes, _dependency_calls
from tests.conftest import draw_shape

IMAGE = png_bytes(draw_shape("yellow_bars", np.random.default_rng(5)))


def test_keys_and_scopes(settings: Settings) -> None:
    secured = settings.model_copy(update={"api_keys_read": ["read-1"], "api_keys_write": ["write-1"]})
    with running(secured) as client:
        for path in ("/healthz", "/readyz", "/", "/static/app.js"):
            assert client.get(path).status_code == 200, path
        r = client.post("/v1/search", files={"image": ("a", IMAGE)})
        assert r.status_code == 401 and r.headers["www-authenticate"] == 'APIKey header="X-API-Key", Bearer'
        assert problem_of(r) == {
            "code": "missing_api_key",
            "detail": "Send an API key in the X-API-Key header (or as Authorization: Bearer <key>).",
        }
        r = client.get("/v1/gallery", headers={"X-API-Key": "read-2"})
        invalid = {"code": "invalid_api_key", "detail": "The API key is not valid."}
        assert r.status_code == 401 and problem_of(r) == invalid
        read, write = {"X-API-Key": "read-1"}, {"X-API-Key": "write-1"}
        assert client.post("/v1/search", files={"image": ("a", IMAGE)}, headers=read).status_code == 200
        assert client.get("/v1/gallery", headers=read).json()["total"] == 48
        forbidden = {"code": "insufficient_scope", "detail": "This key may read but not change the gallery."}
        r = client.post("/v1/gallery", files={"image": ("a", IMAGE)}, data={"label": "x"}, headers=read)
        assert (r.status_code, problem_of(r)) == (403, forbidden)
        r = client.delete("/v1/gallery/0", headers=read)
        assert (r.status_code, problem_of(r)) == (403, forbidden)
        assert client.get("/v1/gallery", headers=write).status_code == 200  # write keys also read
        r = client.post("/v1/gallery", files={"image": ("a", IMAGE)}, data={"label": "x"}, headers=write)
        assert r.status_code == 201, r.text
        assert client.delete(f"/v1/gallery/{r.json()['id']}", headers=write).status_code == 200


def test_metrics_need_a_read_key_unless_public(settings: Settings) -> None:
    secured = settings.model_copy(update={"api_keys_read": ["read-1"], "api_keys_write": ["write-1"]})
    with running(secured) as client:
        r = client.get("/metrics")
        assert (r.status_code, r.json()["code"]) == (401, "missing_api_key")
        assert client.get("/metrics", headers={"X-API-Key": "read-1"}).status_code == 200
    with running(secured.model_copy(update={"metrics_public": True})) as client:
        assert client.get("/metrics").status_code == 200
        assert client.get("/v1/gallery").status_code == 401
    with running(settings) as client:  # no keys: everything open
        assert client.get("/metrics").status_code == 200


def test_the_middleware_asks_each_route_for_the_key_its_dependencies_ask_for(settings: Settings) -> None:
    """ApiKeyMiddleware decides from method and path before routing; the routes declare require_read /
    require_write / require_metrics. Every route and method must agree, or a key would be checked twice
    differently."""
    app = create_app(settings.model_copy(update={"api_keys_read": ["r"]}))
    declared = {require_read: "read", require_write: "write", require_metrics: "read"}
    checked = 0
    for route in _api_routes(app.routes):
        calls = set(_dependency_calls(route.dependant)) & set(declared)
        expected = declared[calls.pop()] if calls else None
        path = route.path.replace("{item_id}", "7")
        for method in route.methods:
            assert required_scope(app.state.settings, method, path) == expected, (method, route.path)
            checked += 1
    assert checked >= 12
    assert required_scope(app.state.settings, "GET", "/static/app.js") is None


def test_open_without_keys(client: object) -> None:
    r = client.post("/v1/gallery", files={"image": ("a", IMAGE)}, data={"label": "x"})  # type: ignore[attr-defined]
    assert r.status_code == 201


def test_keys_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMGSIM_API_KEYS_READ", " a, b ,")
    monkeypatch.setenv("IMGSIM_API_KEYS_WRITE", "w")
    monkeypatch.setenv("IMGSIM_BATCH_MAX_SIZE", "7")
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert (s.api_keys_read, s.api_keys_write, s.batch_max_size, s.auth_enabled) == (["a", "b"], ["w"], 7, True)
