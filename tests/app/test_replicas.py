"""Replicas of the embedded gallery: real ``imgsim serve`` processes on one gallery folder.

A read-only replica sees the writer's changes within ``FOLLOW_DELAY_S`` (it catches up every 0.5 s: the
default ``follow_interval_s``), forwards the writes it receives to the writer and sees them at once;
``serve --workers 2`` answers searches and writes on one port."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np

from app.settings import Settings
from index import GalleryIndex
from tests.app.conftest import free_port, png_bytes, problem_of, running
from tests.conftest import draw_shape

ROOT = Path(__file__).resolve().parents[2]
FOLLOW_DELAY_S = 2.0  # what docs/scale.md states: the follow interval (0.5 s) plus a search, with room for a busy CI


@contextmanager
def serving(
    settings: Settings, tmp_path: Path, *flags: str, env: dict[str, str] | None = None
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    cmd = [sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--device", "cpu"]
    cmd += ["--checkpoint", str(settings.checkpoint), "--index", str(settings.index), *flags]
    cwd = tmp_path / f"cwd-{port}"  # not tmp_path: its index/ folder would shadow the index package under -m
    cwd.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "IMGSIM_ENGINE": "torch", "IMGSIM_DRAIN_SECONDS": "0", **(env or {})}
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        ready = 0
        while ready < 8:  # several answers in a row, each on a new connection: every worker is up
            try:
                ready = ready + 1 if httpx.get(base + "/readyz", timeout=5).status_code == 200 else 0
            except httpx.TransportError:
                ready = 0
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"server did not start: {proc.communicate()[0].decode()[-3000:]}")
            time.sleep(0.05 if ready else 0.2)
        yield base, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def photo(seed: int, shape: str = "red_circles") -> bytes:
    return png_bytes(draw_shape(shape, np.random.default_rng(seed), size=120))


def add(base: str, data: bytes, label: str) -> httpx.Response:
    return httpx.post(base + "/v1/gallery", files={"image": ("a.png", data)}, data={"label": label}, timeout=30)


def top_hit(base: str, data: bytes) -> int:
    r = httpx.post(base + "/v1/search", files={"image": ("q.png", data)}, data={"k": "1"}, timeout=30)
    assert r.status_code == 200, r.text
    return int(r.json()["results"][0]["id"])


def seconds_until_found(base: str, data: bytes, item_id: int, limit: float) -> float:
    start = time.monotonic()
    while top_hit(base, data) != item_id:
        assert time.monotonic() - start < limit, f"item {item_id} not found at {base} within {limit} s"
        time.sleep(0.02)
    return time.monotonic() - start


def test_a_read_only_replica_follows_the_writer_and_forwards_writes(settings: Settings, tmp_path: Path) -> None:
    # The writer folds its log into a new base after every change: the replica follows base swaps too.
    with serving(settings, tmp_path, env={"IMGSIM_COMPACT_MAX_CHANGES": "1"}) as (writer, _):
        replica_flags = ("--read-only", "--writer-url", writer)
        with serving(settings, tmp_path, *replica_flags) as (replica, _):
            before = top_hit(replica, photo(1))
            added = add(writer, photo(1), "written_on_the_writer")
            assert added.status_code == 201, added.text
            new_id = added.json()["id"]
            assert new_id != before
            seconds_until_found(replica, photo(1), new_id, FOLLOW_DELAY_S)
            for k in range(5):  # searches on the replica while it loads the writer's new bases: every one answered
                added = add(writer, photo(10 + k, "yellow_bars"), "more")
                assert added.status_code == 201, added.text
                seconds_until_found(replica, photo(10 + k, "yellow_bars"), added.json()["id"], FOLLOW_DELAY_S)
            assert GalleryIndex.open(settings.index).base_version > 2  # compactions did happen meanwhile

            # A write sent to the replica is the writer's: forwarded, and visible on the replica at once.
            forwarded = add(replica, photo(2, "green_squares"), "written_through_the_replica")
            assert forwarded.status_code == 201, forwarded.text
            other = forwarded.json()["id"]
            assert httpx.get(f"{replica}/v1/gallery/{other}").json()["label"] == "written_through_the_replica"
            assert httpx.get(f"{writer}/v1/gallery/{other}").status_code == 200
            relabelled = httpx.patch(f"{replica}/v1/gallery/{other}", json={"label": "renamed"})
            assert relabelled.status_code == 200 and relabelled.json()["label"] == "renamed"
            assert httpx.get(f"{replica}/v1/gallery/{other}").json()["label"] == "renamed"
            assert httpx.delete(f"{replica}/v1/gallery/{other}").status_code == 200
            assert httpx.get(f"{replica}/v1/gallery/{other}").status_code == 404
            missing = httpx.delete(f"{replica}/v1/gallery/{other}")  # the writer's answer, as it gave it
            assert missing.status_code == 404 and problem_of(missing)["code"] == "item_not_found"


def test_a_replica_without_a_writer_refuses_writes_and_never_takes_the_lock(settings: Settings) -> None:
    replica = settings.model_copy(update={"read_only": True})
    with running(replica) as client:
        r = client.post("/v1/gallery", files={"image": ("a.png", photo(3))}, data={"label": "x"})
        assert r.status_code == 503 and problem_of(r)["code"] == "read_only_replica"
        assert client.delete("/v1/gallery/0").status_code == 503
        assert client.post("/v1/search", files={"image": ("q.png", photo(3))}).status_code == 200
        writer = GalleryIndex.open(settings.index, writer=True)  # the lock is free: the replica never took it
        writer.close()


def test_serve_with_two_workers_answers_searches_and_writes(settings: Settings, tmp_path: Path) -> None:
    with serving(settings, tmp_path, "--workers", "2") as (base, proc):
        roles: set[str] = set()
        deadline = time.monotonic() + 60
        while roles != {"writer", "read-only"}:  # each request on a new connection: either worker takes it
            ready = httpx.get(base + "/readyz")
            assert ready.status_code == 200, ready.text  # a worker still loading takes no connection from the socket
            roles.add(ready.headers["X-Gallery-Role"])
            assert time.monotonic() < deadline, roles
        forwarded = 0
        for k in range(40):
            data = photo(100 + k, ("red_circles", "blue_triangles")[k % 2])
            r = add(base, data, f"added_{k}")
            assert r.status_code == 201, r.text
            forwarded += r.headers.get("via") == "1.1 imgsim-replica"
            seconds_until_found(base, data, r.json()["id"], FOLLOW_DELAY_S)
            if k >= 5 and forwarded >= 2:
                break
        assert forwarded >= 2  # writes taken by the replica reached the writer through its Unix socket
        deadline = time.monotonic() + FOLLOW_DELAY_S  # then both workers hold every write
        while {httpx.get(base + "/v1/gallery").json()["total"] for _ in range(6)} != {48 + k + 1}:
            assert time.monotonic() < deadline
    assert proc.returncode == 0
