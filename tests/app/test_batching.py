"""The dynamic batcher: fewer forward passes than requests, rows back in order, bounded queue, clean close."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.batching import BatcherClosedError, DynamicBatcher, QueueFullError
from app.settings import Settings
from model.inference.embedder import Embedder
from tests.app.conftest import ground_truth, png_bytes, running
from tests.conftest import draw_shape


class FakeModel:
    """Embeds the number ``x`` as the row ``[x, 2x]`` and records every batch it is given."""

    def __init__(self, delay: float = 0.02) -> None:
        self.calls: list[list[float]] = []
        self.delay = delay

    def __call__(self, items: list[float]) -> np.ndarray:
        self.calls.append(list(items))
        time.sleep(self.delay)
        return np.array([[x, 2 * x] for x in items], dtype=np.float32)


async def _submit_all(batcher: DynamicBatcher[float], jobs: list[list[float]]) -> list[np.ndarray]:
    batcher.start()

    async def one(items: list[float]) -> np.ndarray:
        with batcher.admit(len(items)):
            return await batcher.submit(items)

    try:
        return await asyncio.gather(*(one(j) for j in jobs))
    finally:
        await batcher.close()


@pytest.mark.parametrize(("enabled", "instances"), [(True, 1), (False, 1), (True, 2)])
def test_concurrent_jobs_share_passes(enabled: bool, instances: int) -> None:
    model = FakeModel()
    batcher = DynamicBatcher(model, max_batch=8, max_wait_s=0.01, max_queue=64, enabled=enabled, instances=instances)
    jobs = [[float(i)] for i in range(12)] + [[100.0, 101.0, 102.0]]
    out = asyncio.run(_submit_all(batcher, jobs))
    for job, rows in zip(jobs, out, strict=True):
        np.testing.assert_array_equal(rows, [[x, 2 * x] for x in job])
    assert sorted(x for call in model.calls for x in call) == sorted(x for j in jobs for x in j)
    assert max(len(c) for c in model.calls) <= 8
    if enabled:
        assert len(model.calls) < len(jobs)
    else:
        assert len(model.calls) == len(jobs)
    assert batcher.depth == 0 and batcher.batches == len(model.calls)


def test_each_instance_thread_runs_the_initializer_before_its_passes() -> None:
    initialised: list[str] = []
    passes: list[tuple[str, bool]] = []

    def model(items: list[float]) -> np.ndarray:
        name = threading.current_thread().name
        passes.append((name, name in initialised))
        time.sleep(0.01)
        return np.array([[x, 2 * x] for x in items], dtype=np.float32)

    def initializer() -> None:
        time.sleep(0.02)  # a slow initializer still comes first
        initialised.append(threading.current_thread().name)

    batcher = DynamicBatcher(model, max_batch=2, max_queue=64, instances=2, initializer=initializer)
    asyncio.run(_submit_all(batcher, [[float(i)] for i in range(8)]))
    assert sorted(initialised) == ["imgsim-embed-0", "imgsim-embed-1"]
    assert passes and all(ready for _, ready in passes)


def test_instances_run_passes_at_once_and_share_what_waits_meanwhile() -> None:
    running, most = 0, 0
    lock = threading.Lock()
    calls: list[list[float]] = []

    def model(items: list[float]) -> np.ndarray:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
            calls.append(list(items))
        time.sleep(0.05)
        with lock:
            running -= 1
        return np.array([[x, 2 * x] for x in items], dtype=np.float32)

    async def scenario() -> list[np.ndarray]:
        batcher = DynamicBatcher(model, max_batch=8, max_wait_s=0.0, max_queue=64, instances=2)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit([0.0]))
        await asyncio.sleep(0.01)  # the first instance is busy with one image
        second = asyncio.ensure_future(batcher.submit([1.0]))
        await asyncio.sleep(0.01)  # and the second with another
        rest = [asyncio.ensure_future(batcher.submit([float(i)])) for i in range(2, 8)]
        out = await asyncio.gather(first, second, *rest)
        await batcher.close()
        return out

    out = asyncio.run(scenario())
    assert [float(r[0, 0]) for r in out] == [float(i) for i in range(8)]
    assert most == 2  # two passes overlapped
    # The six that waited meanwhile are not one pass of six while the other instance has nothing to do: each
    # instance takes half of what waits (rounded up) when it comes free: 3 of 6, then 2 of 3, then the last.
    assert calls == [[0.0], [1.0], [2.0, 3.0, 4.0], [5.0, 6.0], [7.0]]


def test_a_forming_batch_waits_for_admitted_requests_only_while_they_are_on_their_way() -> None:
    """A request admitted and still decoding is worth waiting for; one whose answer is back (though it has not
    released its admission yet) is not: the batch starts at once instead of idling for ``max_wait_s``."""
    model = FakeModel(delay=0.0)

    async def scenario() -> tuple[float, float]:
        batcher = DynamicBatcher(model, max_batch=8, max_wait_s=2.0, max_queue=64)
        batcher.start()

        async def decoding_then_submit(x: float, decode_s: float) -> np.ndarray:
            with batcher.admit(1) as admission:
                await asyncio.sleep(decode_s)
                return await batcher.submit([x], admission)

        # 1. Two requests admitted together; one is slower to decode: the first waits for it (one pass).
        start = time.monotonic()
        await asyncio.gather(decoding_then_submit(1.0, 0.0), decoding_then_submit(2.0, 0.2))
        waited = time.monotonic() - start

        # 2. A request holds its admission after its answer came back (it is still writing its response).
        with batcher.admit(1) as admission:
            await batcher.submit([3.0], admission)
            start = time.monotonic()
            await decoding_then_submit(4.0, 0.0)  # nobody is on the way: no reason to wait
            alone = time.monotonic() - start
        await batcher.close()
        return waited, alone

    waited, alone = asyncio.run(scenario())
    assert model.calls == [[1.0, 2.0], [3.0], [4.0]]
    assert 0.15 < waited < 1.5  # it waited for the decoding request, not for the whole max_wait_s
    assert alone < 1.0  # far below max_wait_s (2 s)


def test_a_request_that_fails_before_submitting_stops_the_wait() -> None:
    model = FakeModel(delay=0.0)

    async def scenario() -> float:
        batcher = DynamicBatcher(model, max_batch=8, max_wait_s=2.0, max_queue=64)
        batcher.start()

        async def failing() -> None:
            with batcher.admit(1):
                await asyncio.sleep(0.1)
                raise ValueError("not an image")

        async def good() -> np.ndarray:
            with batcher.admit(1) as admission:
                return await batcher.submit([5.0], admission)

        start = time.monotonic()
        results = await asyncio.gather(failing(), good(), return_exceptions=True)
        elapsed = time.monotonic() - start
        await batcher.close()
        assert isinstance(results[0], ValueError)
        return elapsed

    assert asyncio.run(scenario()) < 1.0  # the good request did not sit out max_wait_s (2 s)
    assert model.calls == [[5.0]]


def test_queue_is_bounded_and_errors_reach_every_waiter() -> None:
    def broken(items: list[float]) -> np.ndarray:
        raise RuntimeError("boom")

    async def scenario() -> None:
        batcher = DynamicBatcher(broken, max_batch=4, max_wait_s=0.005, max_queue=3)
        batcher.start()
        with batcher.admit(2), pytest.raises(QueueFullError), batcher.admit(2):
            pass
        assert batcher.depth == 0
        results = await asyncio.gather(batcher.submit([1.0]), batcher.submit([2.0]), return_exceptions=True)
        assert [str(r) for r in results] == ["boom", "boom"]
        await batcher.close()
        with pytest.raises(BatcherClosedError), batcher.admit(1):
            pass

    asyncio.run(scenario())


def test_close_finishes_queued_work() -> None:
    model = FakeModel(delay=0.05)

    async def scenario() -> list[np.ndarray]:
        batcher = DynamicBatcher(model, max_batch=2, max_wait_s=0.0, max_queue=10)
        batcher.start()
        tasks = [asyncio.ensure_future(batcher.submit([float(i)])) for i in range(5)]
        await asyncio.sleep(0)
        await batcher.close()
        return [t.result() for t in tasks]

    out = asyncio.run(scenario())
    assert [float(r[0, 0]) for r in out] == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_concurrent_http_requests_take_fewer_forward_passes(settings: Settings, embedder: Embedder) -> None:
    """N concurrent /v1/search requests through the real app: fewer than N forward passes, each answer the
    same as embedding that image alone."""
    n = 8
    queries = [png_bytes(draw_shape("green_squares", np.random.default_rng(100 + i))) for i in range(n)]
    with running(settings.model_copy(update={"batch_max_wait_ms": 50.0, "batch_max_size": 8})) as client:
        service = client.app.state.runtime.service  # type: ignore[attr-defined]
        original = service.embedder.embed_tensors
        sizes: list[int] = []
        lock = threading.Lock()

        def counting(batch: object) -> np.ndarray:
            with lock:
                sizes.append(len(batch))  # type: ignore[arg-type]
            time.sleep(0.05)  # a slow model: requests pile up behind a running pass
            out: np.ndarray = original(batch)
            return out

        service.embedder.embed_tensors = counting

        def search(data: bytes) -> dict[str, object]:
            r = client.post("/v1/search", files={"image": ("q", data)}, data={"k": "1"})
            assert r.status_code == 200, r.text
            body: dict[str, object] = r.json()
            return body

        with ThreadPoolExecutor(n) as pool:
            answers = list(pool.map(search, queries))
        metrics = client.get("/metrics").text
    assert sum(sizes) == n and len(sizes) < n, sizes
    assert f"imgsim_batch_size_count {float(len(sizes))}" in metrics
    vectors = np.stack([ground_truth(embedder, q) for q in queries])
    for answer, vec in zip(answers, vectors, strict=True):
        hit = answer["results"][0]  # type: ignore[index]
        expected = np.linalg.norm(vec - service.index.vector(hit["id"]))
        assert abs(hit["distance"] - expected) < 1e-4


def test_inference_does_not_block_the_event_loop(client: TestClient) -> None:
    service = client.app.state.runtime.service  # type: ignore[attr-defined]
    release = threading.Event()
    original = service.embedder.embed_tensors
    service.embedder.embed_tensors = lambda batch: (release.wait(10), original(batch))[1]
    query = png_bytes(draw_shape("red_circles", np.random.default_rng(1)))
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(client.post, "/v1/search", files={"image": ("q", query)})
        time.sleep(0.2)
        assert not pending.done()
        assert client.get("/healthz").status_code == 200  # answered while the model is busy
        release.set()
        assert pending.result(10).status_code == 200


def test_two_onnx_instances_answer_like_the_reference(settings: Settings, embedder: Embedder) -> None:
    """Two ONNX instances (each decoding its own batch): concurrent passes on single-threaded sessions give the
    reference answers, and an image that does not decode fails its own request only, with its 4xx."""
    n = 6
    queries = [png_bytes(draw_shape("red_circles", np.random.default_rng(200 + i))) for i in range(n)]
    truncated = png_bytes(draw_shape("red_circles", np.random.default_rng(0)), "JPEG")[:-2]
    two = settings.model_copy(update={"engine": "onnx", "model_instances": 2, "batch_max_size": 4})
    with running(two) as client:
        service = client.app.state.runtime.service  # type: ignore[attr-defined]
        assert service.batcher.instances == 2 and service.embedder.engine_name == "onnx"

        def compare(i: int) -> tuple[int, dict[str, object]]:
            other = truncated if i == n else queries[-1 - i]
            files = [("images", ("a", queries[i % n])), ("images", ("b", other))]
            r = client.post("/v1/compare", files=files)
            return r.status_code, r.json()

        with ThreadPoolExecutor(n + 1) as pool:
            answers = list(pool.map(compare, range(n + 1)))
    for i, (status, body) in enumerate(answers[:n]):
        assert status == 200, body
        a, b = ground_truth(embedder, queries[i]), ground_truth(embedder, queries[-1 - i])
        assert abs(float(body["dissimilarity"]) - float(np.linalg.norm(a - b))) < 1e-3  # type: ignore[arg-type]
    assert answers[n][0] == 422 and answers[n][1]["code"] == "corrupt_image"
    assert str(answers[n][1]["detail"]).startswith("images[1]: ")
