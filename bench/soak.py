"""Soak test: a mixed workload with hostile uploads against ``imgsim serve`` on loopback, killed with ``kill -9``
and restarted at random moments, for a bounded time and number of requests.

    .venv/bin/python -m bench.soak [--minutes 8] [--clients 6] [--kill-every 20 60] [--write BENCHMARKS.md]

Clients search, compare, add and delete (the adds are unique photos, so each creates an item) and send hostile
uploads (bench/hostile.py and malformed requests), each with the answers it may get. Only the HTTP API is used,
so the soak does not depend on how the gallery stores its data. After every restart every acknowledged add must be
there and every acknowledged delete gone. Reported: requests served, 5xx (500s and 503 sheds apart), unexpected
answers, acknowledged writes lost, peak resident memory against the server's idle memory, latency percentiles.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image, ImageDraw

from bench import hostile
from model.core.checkpoint import Checkpoint, save_checkpoint
from model.core.network import ModelConfig, SiameseNetwork

ROOT = Path(__file__).resolve().parents[1]
DOGS = Path(os.environ.get("IMGSIM_BENCH_DOGS", ROOT.parent / "shared" / "data" / "dogs"))
KINDS = {"search": 45, "compare": 15, "add": 15, "delete": 10, "hostile": 15}  # shares of the requests
# Hostile requests to /v1/search: (weight, files, form fields, answers allowed). The one-bit PNG is valid but
# costs ~0.4 GB and most of a second to decode: it may be shed with 503 when the decoding budget is in use.
Files = list[tuple[str, bytes]]
HOSTILE: dict[str, tuple[int, Files, dict[str, str], set[tuple[int, str]]]] = {
    "wide 4000x1 PNG": (3, [("image", hostile.wide_png())], {}, {(422, "bad_aspect_ratio")}),
    "zTXt past Pillow's limit": (3, [("image", hostile.ztxt_bomb())], {}, {(422, "corrupt_image")}),
    "PNG bomb header": (3, [("image", hostile.png_header(30000, 30000))], {}, {(422, "image_too_large")}),
    "empty": (3, [("image", b"")], {}, {(422, "empty_image")}),
    "text": (3, [("image", b"not an image at all")], {}, {(415, "unsupported_format")}),
    "two images": (3, [("image", hostile.wide_png(8, 8))] * 2, {}, {(422, "wrong_image_count")}),
    "k=''": (3, [("image", hostile.wide_png(8, 8))], {"k": ""}, {(422, "invalid_request")}),
    "one-bit 6300x6300 PNG": (1, [("image", hostile.one_bit_png(6300))], {}, {(200, ""), (503, "overloaded")}),
}


@dataclass
class Tally:
    answers: Counter[tuple[str, int, str]] = field(default_factory=Counter)  # (kind, status, code)
    unexpected: Counter[str] = field(default_factory=Counter)
    latencies: dict[str, list[float]] = field(default_factory=dict)
    interrupted: int = 0  # transport errors: requests in flight when the server was killed
    present: set[int] = field(default_factory=set)  # acknowledged adds not deleted since
    absent: set[int] = field(default_factory=set)  # acknowledged deletes
    lost: list[str] = field(default_factory=list)
    acked_adds: int = 0
    acked_deletes: int = 0
    checks: int = 0
    memory: list[tuple[float, float]] = field(default_factory=list)  # (idle MiB, peak MiB) per server lifetime

    @property
    def served(self) -> int:
        return sum(self.answers.values())


class Server:
    """``imgsim serve`` in a subprocess; ``kill()`` is ``kill -9`` after noting the peak memory."""

    def __init__(self, ckpt: Path, index_dir: Path, port: int, log: Path) -> None:
        self.ckpt, self.index_dir, self.port, self.log = ckpt, index_dir, port, log
        self.base = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, "IMGSIM_ACCESS_LOG": "false", "IMGSIM_DRAIN_SECONDS": "0"}
        cmd = [sys.executable, "-m", "app.cli", "serve", "--port", str(self.port), "--device", "cpu"]
        cmd += ["--checkpoint", str(self.ckpt), "--index", str(self.index_dir)]
        self.proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=self.log.open("ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                if httpx.get(self.base + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"the server did not become ready; see {self.log}")

    def memory_mib(self, field_name: str) -> float:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024
        return 0.0

    def kill(self) -> float:
        assert self.proc is not None
        peak = self.memory_mib("VmHWM")
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        return peak


def unique_photo(photos: list[bytes], rng: random.Random) -> bytes:
    """A dog photo with a random patch painted on it: new content, so its add creates a new item."""
    image = Image.open(io.BytesIO(rng.choice(photos))).convert("RGB")
    x, y = rng.randrange(image.width - 40), rng.randrange(image.height - 40)
    ImageDraw.Draw(image).rectangle((x, y, x + 40, y + 40), fill=tuple(rng.randrange(256) for _ in range(3)))
    return hostile.jpeg(image, quality=85)


async def one_request(client: httpx.AsyncClient, tally: Tally, photos: list[bytes], rng: random.Random) -> None:
    kind = rng.choices(list(KINDS), weights=list(KINDS.values()))[0]
    allowed = {(200, ""), (201, "")}
    victim = None
    if kind == "search":
        call = client.post("/v1/search", files={"image": ("q.jpg", rng.choice(photos))}, data={"k": "5"})
    elif kind == "compare":
        pair = [("images", ("a.jpg", rng.choice(photos))), ("images", ("b.jpg", rng.choice(photos)))]
        call = client.post("/v1/compare", files=pair)
    elif kind == "add":
        call = client.post("/v1/gallery", files={"image": ("a.jpg", unique_photo(photos, rng))}, data={"label": "soak"})
    elif kind == "delete" and tally.present:
        victim = rng.choice(sorted(tally.present))
        tally.present.discard(victim)  # unknown until acknowledged
        call = client.delete(f"/v1/gallery/{victim}")
    else:
        kind = rng.choices(list(HOSTILE), weights=[h[0] for h in HOSTILE.values()])[0]
        _, files, fields, allowed = HOSTILE[kind]
        call = client.post("/v1/search", files=[(name, ("x.png", data)) for name, data in files], data=fields)
    start = time.perf_counter()
    try:
        r = await call
    except httpx.TransportError:
        tally.interrupted += 1
        return
    tally.latencies.setdefault(kind if kind in KINDS else "hostile", []).append(time.perf_counter() - start)
    code = "" if r.status_code < 300 else r.json().get("code", "")
    tally.answers[(kind, r.status_code, code)] += 1
    if (r.status_code, code) not in allowed:
        tally.unexpected[f"{kind}: {r.status_code} {code}"] += 1
    if kind == "add" and r.status_code in (200, 201):
        tally.present.add(r.json()["id"])
        tally.acked_adds += 1
    if victim is not None and r.status_code == 200:
        tally.absent.add(victim)
        tally.acked_deletes += 1
    elif victim is not None and r.status_code == 404:
        tally.lost.append(f"acknowledged add {victim} was gone when deleted")


async def verify(base: str, tally: Tally) -> None:
    """Every acknowledged add present, every acknowledged delete absent."""
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        for item, want in [(i, 200) for i in sorted(tally.present)] + [(i, 404) for i in sorted(tally.absent)]:
            status = (await client.get(f"/v1/gallery/{item}")).status_code
            tally.checks += 1
            if status != want:
                tally.lost.append(f"item {item}: {status} after restart, expected {want}")


async def soak(server: Server, photos: list[bytes], args: argparse.Namespace, tally: Tally) -> float:
    rng = random.Random(args.seed)
    up, clients_done = asyncio.Event(), asyncio.Event()
    stop = time.monotonic() + 60 * args.minutes
    budget = iter(range(args.max_requests))

    async def client_loop(k: int) -> None:
        client_rng = random.Random(args.seed * 1000 + k)
        async with httpx.AsyncClient(base_url=server.base, timeout=120) as client:
            while next(budget, None) is not None:
                await up.wait()
                if time.monotonic() >= stop:
                    return
                await one_request(client, tally, photos, client_rng)

    async def clients() -> None:
        await asyncio.gather(*(client_loop(k) for k in range(args.clients)))
        clients_done.set()

    async def warm_up_and_note_idle() -> None:
        # Concurrent searches, so that every model instance has run (and opened its session) before measuring.
        async with httpx.AsyncClient(base_url=server.base, timeout=60) as client:
            await asyncio.gather(*(client.post("/v1/search", files={"image": ("w.jpg", p)}) for p in photos[:20]))
        tally.memory.append((server.memory_mib("VmRSS"), 0.0))

    started = time.monotonic()
    load = asyncio.create_task(clients())
    while True:  # run, kill -9 at a random moment, restart, check; the last kill comes when the time is up
        await warm_up_and_note_idle()
        up.set()
        wait = min(rng.uniform(*args.kill_every), max(stop - time.monotonic(), 0.0))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(clients_done.wait(), wait)
        up.clear()
        tally.memory[-1] = (tally.memory[-1][0], server.kill())
        await asyncio.to_thread(server.start)
        await verify(server.base, tally)
        if clients_done.is_set() or time.monotonic() >= stop:
            break
    up.set()  # clients waiting for the server see that the time is up
    await load
    return time.monotonic() - started


def seed_gallery(base: str, photos: list[bytes]) -> None:
    with httpx.Client(base_url=base, timeout=60) as client:
        for k, photo in enumerate(photos):
            r = client.post("/v1/gallery", files={"image": (f"{k}.jpg", photo)}, data={"label": f"breed{k % 10}"})
            r.raise_for_status()


def report(tally: Tally, seconds: float, args: argparse.Namespace) -> str:
    fivexx = Counter({k: n for k, n in tally.answers.items() if k[1] >= 500})
    shed = sum(n for (_, s, c), n in fivexx.items() if (s, c) == (503, "overloaded"))
    idle, peak = max(tally.memory, key=lambda m: m[1] / m[0])  # the lifetime whose peak was highest over idle
    everything = [x for v in tally.latencies.values() for x in v]
    lat = "; ".join(
        f"{k} p50 {np.percentile(v, 50) * 1000:.0f} / p99 {np.percentile(v, 99) * 1000:.0f} ms"
        for k, v in sorted(tally.latencies.items())
    )
    hostile_counts = ", ".join(f"{k}: {n}" for (k, _, _), n in sorted(tally.answers.items()) if k in HOSTILE)
    return "\n".join(
        [
            "### Soak: mixed workload, hostile uploads, kill -9 and restart (bench/soak.py)",
            "",
            f"Machine: {platform.platform()}, {os.cpu_count()} CPU cores shared by the server and {args.clients} "
            f"clients (loopback). Server: `imgsim serve` with its defaults (ONNX Runtime, one model instance per "
            f"core, decoding budget 1 GiB), efficientnet-lite0 (224 px, 256-d), gallery seeded over HTTP with "
            f"{args.seed_photos} dog photos. Command: `.venv/bin/python -m bench.soak --minutes {args.minutes:g} "
            f"--clients {args.clients} --kill-every {args.kill_every[0]:g} {args.kill_every[1]:g}` "
            f"({datetime.now(UTC):%Y-%m-%d %H:%M} UTC).",
            "",
            "| measure | result | target |",
            "|---|---|---|",
            f"| requests answered | {tally.served:,} in {seconds / 60:.1f} min ({tally.served / seconds:.1f}/s); "
            f"{tally.interrupted} cut by the kills | |",
            f"| kill -9, restart, check | {len(tally.memory)} times; {tally.checks:,} item checks in all | |",
            f"| 5xx | {sum(fivexx.values())}: {sum(fivexx.values()) - shed} errors, {shed} sheds (503 overloaded) "
            f"| 0 errors |",
            f"| answers not in the allowed set | {sum(tally.unexpected.values())} "
            f"{dict(tally.unexpected) if tally.unexpected else ''} | 0 |",
            f"| acknowledged writes lost | {len(tally.lost)} ({tally.acked_adds} adds and {tally.acked_deletes} "
            "deletes acknowledged) | 0 |",
            f"| peak resident memory | {peak:.0f} MiB, {peak / idle:.2f}x idle ({idle:.0f} MiB after start and 20 "
            f"searches; the worst of {len(tally.memory)} lifetimes) | ≤ 2x idle |",
            f"| latency, every answer | p50 {np.percentile(everything, 50) * 1000:.0f} ms, p99 "
            f"{np.percentile(everything, 99) * 1000:.0f} ms | |",
            "",
            f"By kind: {lat}. Hostile uploads sent: {hostile_counts}.",
            *(f"- lost: {x}" for x in tally.lost[:20]),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=8.0)
    parser.add_argument("--max-requests", type=int, default=100_000)
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--kill-every", type=float, nargs=2, default=(20.0, 60.0), metavar=("MIN_S", "MAX_S"))
    parser.add_argument("--seed-photos", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write", type=Path, help="put the report in this Markdown file's soak section")
    args = parser.parse_args()
    all_photos = sorted(DOGS.glob("*/*.jpg"))
    if not all_photos:
        raise FileNotFoundError(f"Dog photos not found at {DOGS}.")
    photos = [p.read_bytes() for p in all_photos[:: max(1, len(all_photos) // 400)]]
    with tempfile.TemporaryDirectory(prefix="imgsim-soak-") as tmp:
        torch.manual_seed(0)
        ckpt = Path(tmp) / "lite0.pt"
        save_checkpoint(Checkpoint(SiameseNetwork(ModelConfig()).eval(), class_names=[]), ckpt)
        server = Server(ckpt, Path(tmp) / "gallery", 8791, Path(tmp) / "serve.log")
        server.start()
        tally = Tally()
        try:
            seed_gallery(server.base, photos[: args.seed_photos])
            seconds = asyncio.run(soak(server, photos, args, tally))
        finally:
            if server.proc is not None and server.proc.poll() is None:
                server.kill()
    text = report(tally, seconds, args)
    print(text)
    if args.write:
        from bench.run_all import update_file

        update_file(args.write, {"soak": text})


if __name__ == "__main__":
    main()
