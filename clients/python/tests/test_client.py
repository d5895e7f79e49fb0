"""The client on its own (no server: httpx's MockTransport plays it): retries and their waits, errors, auth,
timeouts, sync and async alike, and a distribution that pulls in httpx and pydantic only."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tomllib
from email.utils import formatdate
from pathlib import Path

import httpx
import imgsim_client.client as client_module
import pytest
from imgsim_client import ApiError, AsyncClient, Client, Retry, SearchResponse
from imgsim_client.retry import retry_after

ROOT = Path(__file__).resolve().parents[1]
SEARCH = {"results": [{"id": 1, "label": "beagle", "distance": 0.2, "similarity": 0.98, "image_url": "/x"}],
          "took_ms": 3.0, "index_version": 2}  # fmt: skip
PROBLEM = {"type": "about:blank", "title": "Service Unavailable", "status": 503, "code": "overloaded", "detail": "busy"}


def scripted(*answers: httpx.Response | Exception) -> tuple[httpx.MockTransport, list[httpx.Request]]:
    """A transport answering the requests in turn; the requests it saw are kept."""
    seen: list[httpx.Request] = []
    queue = list(answers)

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = queue.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    return httpx.MockTransport(handle), seen


def busy(retry_after_value: str | None = None, status: int = 503) -> httpx.Response:
    headers = {"Retry-After": retry_after_value} if retry_after_value is not None else {}
    return httpx.Response(status, json={**PROBLEM, "status": status}, headers=headers)


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    slept: list[float] = []
    monkeypatch.setattr(client_module.time, "sleep", slept.append)

    async def asleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(client_module.asyncio, "sleep", asleep)
    return slept


def test_503_and_429_are_retried_after_retry_after(waits: list[float]) -> None:
    transport, seen = scripted(busy("2"), busy("1", status=429), httpx.Response(200, json=SEARCH))
    with Client("http://imgsim", transport=transport) as c:
        answer = c.search(b"jpeg bytes", k=1)
    assert isinstance(answer, SearchResponse) and answer.results[0].label == "beagle"
    assert waits == [2.0, 1.0] and len(seen) == 3
    assert all(b"jpeg bytes" in r.content for r in seen)  # the same upload sent again


def test_without_retry_after_the_wait_backs_off_and_is_capped(waits: list[float]) -> None:
    transport, _ = scripted(busy(), busy(), busy("3600"), httpx.Response(200, json=SEARCH))
    with Client("http://imgsim", transport=transport, retry=Retry(attempts=4, backoff=1.0, max_wait=10)) as c:
        c.search(b"x")
    assert 0.5 <= waits[0] <= 1.0 and 1.0 <= waits[1] <= 2.0 and waits[2] == 10


def test_attempts_run_out_into_the_services_error(waits: list[float]) -> None:
    transport, seen = scripted(busy("0"), busy("0"), busy("0"))
    with Client("http://imgsim", transport=transport, retry=Retry(attempts=3)) as c, pytest.raises(ApiError) as err:
        c.search(b"x")
    assert (err.value.status, err.value.code, err.value.detail, len(seen)) == (503, "overloaded", "busy", 3)


def test_other_errors_are_not_retried_and_keep_the_request_id(waits: list[float]) -> None:
    body = {**PROBLEM, "status": 422, "title": "Unprocessable Entity", "code": "corrupt_image", "detail": "image: bad"}
    transport, seen = scripted(httpx.Response(422, json=body, headers={"X-Request-ID": "r-9"}))
    with Client("http://imgsim", transport=transport) as c, pytest.raises(ApiError) as err:
        c.search(b"x")
    assert (err.value.code, err.value.request_id, len(seen), waits) == ("corrupt_image", "r-9", 1, [])
    transport, _ = scripted(httpx.Response(502, text="<html>bad gateway</html>"))
    with Client("http://imgsim", transport=transport) as c, pytest.raises(ApiError) as err:
        c.model()
    assert (err.value.status, err.value.code) == (502, "http_error")  # a proxy's page, not a problem document


def test_a_refused_connection_is_retried_a_timeout_after_sending_is_not(waits: list[float]) -> None:
    transport, seen = scripted(httpx.ConnectError("refused"), httpx.Response(200, json=SEARCH))
    with Client("http://imgsim", transport=transport) as c:
        assert c.search(b"x").results
    assert len(seen) == 2 and len(waits) == 1
    transport, seen = scripted(httpx.ReadTimeout("slow"), httpx.Response(200, json=SEARCH))
    with Client("http://imgsim", transport=transport) as c, pytest.raises(httpx.ReadTimeout):
        c.add(b"x", "beagle")  # the service may have added it: the caller decides
    assert len(seen) == 1


def test_key_timeout_and_request_shapes(tmp_path: Path) -> None:
    transport, seen = scripted(*(httpx.Response(200, json=SEARCH) for _ in range(3)))
    photo = tmp_path / "dog.jpg"
    photo.write_bytes(b"\xff\xd8 jpeg")
    with Client("http://imgsim", api_key="k1", transport=transport) as c:
        assert c.http.timeout.connect == 5.0 and c.http.timeout.read == 30.0
        c.search(photo, k=3, label="beagle", score_threshold=0.8)
        c.search_vector([0.5, 0.5], k=2)
        c.similar(7, score_threshold=0.5)
    assert all(r.headers["authorization"] == "Bearer k1" for r in seen)
    assert b'name="k"\r\n\r\n3' in seen[0].content and b'name="score_threshold"\r\n\r\n0.8' in seen[0].content
    assert b"\xff\xd8 jpeg" in seen[0].content
    assert seen[1].url.path == "/v1/search/vector" and seen[1].content == b'{"vector":[0.5,0.5],"k":2}'
    assert str(seen[2].url) == "http://imgsim/v1/gallery/7/similar?k=5&score_threshold=0.5"


def test_async_client_retries_the_same_way(waits: list[float]) -> None:
    transport, seen = scripted(httpx.ConnectError("refused"), busy("1"), httpx.Response(200, json=SEARCH))

    async def run() -> SearchResponse:
        async with AsyncClient("http://imgsim", transport=transport) as c:
            return await c.search(b"x")

    assert asyncio.run(run()).results[0].id == 1
    assert len(seen) == 3 and len(waits) == 2 and waits[1] == 1.0


def test_retry_after_forms() -> None:
    assert retry_after("7") == 7.0
    assert retry_after(formatdate(1_000_030, usegmt=True), now=1_000_000) == pytest.approx(30)
    assert retry_after(formatdate(1_000_000, usegmt=True), now=1_000_030) == 0.0  # in the past: now
    assert retry_after("soon") is None and retry_after(None) is None


def run_python(code: str) -> str:
    src = str(ROOT / "src")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={"PYTHONPATH": src, "PATH": "/usr/bin:/bin"})  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_the_distribution_depends_on_httpx_and_pydantic_only() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert sorted(d.split(">")[0] for d in project["dependencies"]) == ["httpx", "pydantic"]
    heavy = run_python(
        "import sys, imgsim_client; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'numpy', 'faiss', 'fastapi', 'PIL', "
        "'app', 'model', 'index', 'starlette', 'onnxruntime'}))"
    )
    assert heavy == "[]"


def test_the_distribution_builds(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    [wheel] = tmp_path.glob("imgsim_client-*.whl")
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    assert "imgsim_client/client.py" in names and "imgsim_client/py.typed" in names
    assert not any(n.startswith(("app/", "model/", "index/")) for n in names)
    metadata = next(n for n in names if n.endswith("METADATA"))
    requires = [
        line for line in zipfile.ZipFile(wheel).read(metadata).decode().splitlines() if line.startswith("Requires-Dist")
    ]
    assert sorted(requires) == ["Requires-Dist: httpx>=0.27", "Requires-Dist: pydantic>=2.7"]
