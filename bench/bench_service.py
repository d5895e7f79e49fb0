"""Service benchmark: ``/v1/search`` and ``/v1/compare`` over loopback HTTP, batched vs unbatched.

A real ``imgsim serve`` (uvicorn) runs in a subprocess with an efficientnet-lite0 checkpoint (pretrained
backbone, untrained head: the same speed as a trained one) and a gallery of a few hundred dog photos; an httpx
async client sends real 320-px JPEGs at concurrency 1, 8 and 32. The baseline is the in-process embedding
throughput of the same model and engine in the same run (preprocessed batches, no decoding, no HTTP).

    .venv/bin/python -m bench.bench_service [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import faiss
import httpx
import numpy as np
import torch

from index import GalleryIndex, NewItem
from model.checkpoint import Checkpoint, save_checkpoint
from model.embedder import Embedder
from model.images import load_image
from model.network import ModelConfig, SiameseNetwork

ROOT = Path(__file__).resolve().parents[1]
DOGS = Path(os.environ.get("IMGSIM_BENCH_DOGS", ROOT.parent / "shared" / "data" / "dogs"))
ENGINE = os.environ.get("IMGSIM_ENGINE", "auto")
CONCURRENCY = (1, 8, 32)
BATCH_MAX = 8  # batched mode: up to 8 images per forward pass (the service's CPU default is 1)


@dataclass
class Run:
    endpoint: str
    mode: str
    concurrency: int
    requests: int
    seconds: float
    latencies: list[float]
    mean_batch: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds  # ``seconds`` is scaled so this is the median over repeats

    def pct(self, q: float) -> float:
        return float(np.percentile(self.latencies, q) * 1000)


def dog_files(per_breed: int, offset: int) -> list[Path]:
    files = []
    for breed in sorted(p for p in DOGS.iterdir() if p.is_dir()):
        files.extend(sorted(breed.glob("*.jpg"))[offset : offset + per_breed])
    return files


def build(workdir: Path, gallery: list[Path]) -> tuple[Path, Path, Embedder]:
    torch.manual_seed(0)
    ckpt_path = workdir / "lite0.pt"
    save_checkpoint(Checkpoint(SiameseNetwork(ModelConfig()).eval(), class_names=[]), ckpt_path)
    embedder = Embedder(ckpt_path, device="cpu", engine=ENGINE)
    result = embedder.embed_files(gallery, batch_size=32, progress=True)
    ckpt = embedder.checkpoint
    index_dir = workdir / "gallery_index"
    gi = GalleryIndex.create(
        index_dir, model_hash=ckpt.hash, backbone=ckpt.config.backbone, dim=embedder.dim, gallery_root=DOGS
    )
    items = []
    for i in result.ok:
        p = gallery[i]
        items.append(NewItem(str(p.relative_to(DOGS)), p.parent.name, f"{i:064x}", 0, 0))
    gi.add(result.embeddings, items)
    gi.save()
    return ckpt_path, index_dir, embedder


def in_process_rate(embedder: Embedder, queries: list[bytes], seconds: float) -> tuple[dict[int, float], float]:
    """Images/s of the model alone on preprocessed batches of 1, 8 and 32 (median of 3 each), and of decoding
    plus preprocessing alone (one thread)."""
    size = embedder.preset.resize_size
    tensors = torch.stack([embedder.preset(load_image(q, draft_size=size)) for q in (queries * 32)[:32]])
    rates: dict[int, float] = {}
    for bs in (1, 8, 32):
        embedder.embed_tensors(tensors[:bs])  # warm-up
        samples = []
        for _ in range(3):
            n, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds / 9:
                embedder.embed_tensors(tensors[:bs])
                n += bs
            samples.append(n / (time.perf_counter() - start))
        rates[bs] = statistics.median(samples)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < 1.0:
        embedder.preset(load_image(queries[n % len(queries)], draft_size=size))
        n += 1
    return rates, n / (time.perf_counter() - start)


def start_server(ckpt: Path, index_dir: Path, port: int, batching: bool, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "IMGSIM_BATCHING": str(batching).lower(),
        "IMGSIM_ACCESS_LOG": "false",
        "IMGSIM_ENGINE": ENGINE,
        "IMGSIM_QUEUE_MAX": "256",
        "IMGSIM_BATCH_MAX_SIZE": str(BATCH_MAX),
        "IMGSIM_BATCH_MAX_WAIT_MS": "3",
    }
    cmd = [
        sys.executable,
        "-m",
        "app.cli",
        "serve",
        "--port",
        str(port),
        "--device",
        "cpu",
        "--checkpoint",
        str(ckpt),
        "--index",
        str(index_dir),
    ]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"server did not become ready; see {log}")


def batch_stats(base: str) -> tuple[float, float]:
    text = httpx.get(base + "/metrics").text
    total = float(re.search(r"^imgsim_batch_size_sum (\S+)", text, re.M).group(1))  # type: ignore[union-attr]
    count = float(re.search(r"^imgsim_batch_size_count (\S+)", text, re.M).group(1))  # type: ignore[union-attr]
    return total, count


async def load(
    base: str, endpoint: str, queries: list[bytes], concurrency: int, total: int
) -> tuple[float, list[float]]:
    latencies: list[float] = []
    counter = iter(range(total))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as client:

        async def worker() -> None:
            for i in counter:
                if endpoint == "search":
                    kw = {"files": {"image": ("q.jpg", queries[i % len(queries)])}, "data": {"k": "10"}}
                    url = "/v1/search"
                else:
                    a, b = queries[i % len(queries)], queries[(i * 7 + 3) % len(queries)]
                    kw, url = {"files": [("images", ("a.jpg", a)), ("images", ("b.jpg", b))]}, "/v1/compare"
                start = time.perf_counter()
                r = await client.post(url, **kw)  # type: ignore[arg-type]
                latencies.append(time.perf_counter() - start)
                if r.status_code != 200:
                    raise RuntimeError(f"{url}: {r.status_code} {r.text[:200]}")

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - start, latencies


def measure(bases: dict[str, str], queries: list[bytes], quick: bool) -> list[Run]:
    """Each cell runs both modes back to back, alternating which goes first, ``repeats`` times: the machine is
    shared, so throughput is the median over repeats and latency percentiles pool every request."""
    for base in bases.values():
        asyncio.run(load(base, "search", queries, 4, 8))  # warm-up (first passes, thread pools, connections)
    repeats = 1 if quick else 3
    per = {1: 12, 8: 48, 32: 96} if quick else {1: 24, 8: 96, 32: 160}
    runs = []
    for endpoint in ("search", "compare"):
        for c in CONCURRENCY:
            n = per[c] // (2 if endpoint == "compare" else 1)
            rates: dict[str, list[float]] = {m: [] for m in bases}
            lats: dict[str, list[float]] = {m: [] for m in bases}
            batch_sums = {m: [0.0, 0.0] for m in bases}
            for rep in range(repeats):
                order = list(bases.items())
                for mode, base in order if rep % 2 == 0 else order[::-1]:
                    s0, n0 = batch_stats(base)
                    seconds, lat = asyncio.run(load(base, endpoint, queries, c, n))
                    s1, n1 = batch_stats(base)
                    rates[mode].append(n / seconds)
                    lats[mode] += lat
                    batch_sums[mode][0] += s1 - s0
                    batch_sums[mode][1] += n1 - n0
            for mode in bases:
                rps = statistics.median(rates[mode])
                mean_batch = batch_sums[mode][0] / max(batch_sums[mode][1], 1)
                runs.append(Run(endpoint, mode, c, n * repeats, n * repeats / rps, lats[mode], mean_batch))
                print(f"  {endpoint} {mode} c={c}: {rps:.1f} req/s (median of {repeats})", file=sys.stderr)
    return runs


def run(quick: bool = False) -> str:
    if not (DOGS / "manifest.csv").is_file():
        raise FileNotFoundError(f"Dog photos not found at {DOGS}.")
    torch.set_num_threads(os.cpu_count() or 1)
    gallery = dog_files(15 if quick else 25, 0)
    queries = [p.read_bytes() for p in dog_files(4 if quick else 8, 100)]
    with tempfile.TemporaryDirectory(prefix="imgsim-bench-") as tmp:
        workdir = Path(tmp)
        ckpt, index_dir, embedder = build(workdir, gallery)
        engine_name = getattr(embedder, "engine_name", "torch")
        model_rates, decode_rate = in_process_rate(embedder, queries, 6 if quick else 12)
        del embedder
        procs = {}
        try:
            for port, (batching, mode) in enumerate(((True, "batched"), (False, "unbatched")), start=8701):
                procs[mode] = (port, start_server(ckpt, index_dir, port, batching, workdir / f"serve-{mode}.log"))
            runs = measure({m: f"http://127.0.0.1:{port}" for m, (port, _) in procs.items()}, queries, quick)
        finally:
            for _, proc in procs.values():
                proc.terminate()
                proc.wait(timeout=60)
    return report(runs, model_rates, decode_rate, engine_name, len(gallery), quick)


def report(
    runs: list[Run], model_rates: dict[int, float], decode_rate: float, engine: str, n_gallery: int, quick: bool
) -> str:
    best_bs = max(model_rates, key=lambda b: model_rates[b])
    model_rate = model_rates[best_bs]
    by = {(r.endpoint, r.mode, r.concurrency): r for r in runs}
    lines = [
        "### REST service: /v1/search and /v1/compare over loopback",
        "",
        f"Machine: {platform.platform()}, {os.cpu_count()} CPU cores (shared), torch {torch.__version__}, "
        f"faiss {faiss.__version__}, engine `{engine}`, efficientnet-lite0 (224 px, 256-d), gallery of "
        f"{n_gallery} dog photos (exact index), queries are 320-px JPEGs from shared/data/dogs.",
        f"Command: `.venv/bin/python -m bench.bench_service{' --quick' if quick else ''}` "
        f"({datetime.now(UTC):%Y-%m-%d}).",
        "",
        "| endpoint | mode | concurrency | requests | req/s | images/s | p50 ms | p99 ms | images per forward pass |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        per = 2 if r.endpoint == "compare" else 1
        lines.append(
            f"| /v1/{r.endpoint} | {r.mode} | {r.concurrency} | {r.requests} | {r.rps:.1f} | "
            f"{r.rps * per:.1f} | {r.pct(50):.0f} | {r.pct(99):.0f} | {r.mean_batch:.1f} |"
        )
    lines += ["", "| endpoint | concurrency | batched / unbatched throughput |", "|---|---:|---:|"]
    for endpoint in ("search", "compare"):
        for c in CONCURRENCY:
            b, u = by[(endpoint, "batched", c)], by[(endpoint, "unbatched", c)]
            lines.append(f"| /v1/{endpoint} | {c} | {b.rps / u.rps:.2f}x |")
    s8 = {mode: by[("search", mode, 8)].rps for mode in ("batched", "unbatched")}
    lines += [
        "",
        f"Batched: dynamic batching, at most {BATCH_MAX} images per pass, at most 3 ms wait. Unbatched: one request "
        f"per pass (IMGSIM_BATCHING=false). Throughput: median of {1 if quick else 3} run(s) per cell, "
        "modes interleaved.",
        "In-process embedding, same model and engine, same run (preprocessed tensors, median of 3): "
        + ", ".join(f"batch {b}: {r:.1f} images/s" for b, r in model_rates.items())
        + f". JPEG decode + preprocessing alone, one thread: {decode_rate:.0f} images/s.",
        f"**End-to-end /v1/search at concurrency 8 / best in-process embedding (batch {best_bs}): "
        f"unbatched {s8['unbatched']:.1f} / {model_rate:.1f} = {s8['unbatched'] / model_rate:.2f}; batched "
        f"{s8['batched']:.1f} / {model_rate:.1f} = {s8['batched'] / model_rate:.2f}** (target ≥ 0.8).",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer images and requests")
    print(run(quick=parser.parse_args().quick))


if __name__ == "__main__":
    main()
