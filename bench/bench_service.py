"""Service benchmark: ``/v1/search`` and ``/v1/compare`` over loopback HTTP, batched vs unbatched.

A real ``imgsim serve`` (uvicorn) runs in a subprocess with an efficientnet-lite0 checkpoint (pretrained
backbone, untrained head: the same speed as a trained one) in the default precision (int8, calibrated on other
dog photos) and a gallery of a few hundred dog photos; a lean load generator (:mod:`bench.http_load`, keep-alive
connections, requests built once) sends real 320-px JPEGs at concurrency 1, 8 and 32. The baseline is the
in-process embedding throughput of the same model and engine in the same run (preprocessed batches, no
decoding, no HTTP). Then ``/v1/search`` at concurrency 8 on the default server settings, for each backbone
(lite0, lite1, lite2) in fp32 and int8, every server up at once and measured in interleaved repeats.

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
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import faiss
import httpx
import numpy as np
import torch

from bench.http_load import LoadResult, multipart_request, run_load
from index import GalleryIndex, NewItem
from model.core.checkpoint import Checkpoint, save_checkpoint
from model.core.images import load_image
from model.core.network import ModelConfig, SiameseNetwork
from model.inference.decode import decode_tensor
from model.inference.embedder import Embedder
from model.inference.engines import OnnxEngine

ROOT = Path(__file__).resolve().parents[1]
DOGS = Path(os.environ.get("IMGSIM_BENCH_DOGS", ROOT.parent / "shared" / "data" / "dogs"))
ENGINE = os.environ.get("IMGSIM_ENGINE", "auto")
CONCURRENCY = (1, 8, 32)
BASELINE_BATCHES = (1, 2, 4, 8, 32)
BATCH_MAX = 8  # batched modes: up to 8 images per forward pass (the service's CPU default)
# Server modes, each a running `imgsim serve` with these settings. "2 instances" (the default on 2 cores): two
# passes at once, each instance decoding its own batch and using one core while the other pass runs; "1
# instance": one pass at a time using every core, requests decoded in worker threads.
MODES = {
    "batched, 2 instances": {"IMGSIM_BATCHING": "true", "IMGSIM_MODEL_INSTANCES": "2"},
    "batched, 1 instance": {"IMGSIM_BATCHING": "true", "IMGSIM_MODEL_INSTANCES": "1"},
    "unbatched, 1 instance": {"IMGSIM_BATCHING": "false", "IMGSIM_MODEL_INSTANCES": "1"},
}


@dataclass
class Run:
    endpoint: str
    mode: str
    concurrency: int
    requests: int
    seconds: float
    latencies: list[float]
    mean_batch: float
    server_cpu_ms: float  # the server process's CPU time per request (median over repeats)

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


def build(
    workdir: Path,
    gallery: list[Path],
    backbone: str = "efficientnet-lite0",
    precision: str = "int8",
    calibration: list[Path] | None = None,
) -> tuple[Path, Path, Embedder]:
    """A checkpoint (untrained head), its int8 model when asked (cached beside it, so the server finds it) and a
    gallery embedded in that precision (the server's precision auto follows it)."""
    torch.manual_seed(0)
    workdir.mkdir(parents=True, exist_ok=True)
    ckpt_path = workdir / "model.pt"
    save_checkpoint(Checkpoint(SiameseNetwork(ModelConfig(backbone=backbone)).eval(), class_names=[]), ckpt_path)
    embedder = Embedder(ckpt_path, device="cpu", engine=ENGINE, precision=precision, calibration_images=calibration)
    result = embedder.embed_files(gallery, batch_size=32, progress=False)
    ckpt = embedder.checkpoint
    index_dir = workdir / "gallery_index"
    gi = GalleryIndex.create(
        index_dir,
        model_hash=ckpt.hash,
        backbone=ckpt.config.backbone,
        dim=embedder.dim,
        gallery_root=DOGS,
        precision=embedder.precision,
    )
    items = []
    for i in result.ok:
        p = gallery[i]
        items.append(NewItem(str(p.relative_to(DOGS)), p.parent.name, f"{i:064x}", 0, 0))
    gi.add(result.embeddings, items)
    gi.compact()
    gi.close()
    return ckpt_path, index_dir, embedder


def in_process_rate(embedder: Embedder, queries: list[bytes], seconds: float) -> tuple[dict[str, float], float]:
    """Images/s of the model alone on preprocessed batches of 1 to 32 (median of 3 each), both as one call
    at a time using every core and as two single-threaded calls at once; and of decoding plus cropping alone
    (one thread). The small batches are the ones the service forms at concurrency 8, and single-threaded they
    are the fastest per image, so the baseline is the best the model does in any of these arrangements."""
    size = embedder.preset.resize_size
    tensors = torch.stack([embedder.preset(load_image(q, draft_size=size)) for q in (queries * 32)[:32]])
    engine = embedder.engine
    rates: dict[str, float] = {}
    per_run = seconds / (6 * len(BASELINE_BATCHES))  # 3 runs of each batch size in each arrangement
    for bs in BASELINE_BATCHES:
        batch = tensors[:bs]
        rates[f"batch {bs}, 1 instance"] = _rate(partial(embedder.embed_tensors, batch), bs, 1, per_run)
        if isinstance(engine, OnnxEngine):
            single = partial(engine.run_single_threaded, batch)
            rates[f"batch {bs}, 2 instances"] = _rate(single, bs, 2, per_run)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < 1.0:
        embedder.preset.crop(decode_tensor(queries[n % len(queries)], draft_size=size))
        n += 1
    return rates, n / (time.perf_counter() - start)


def _rate(call: Callable[[], object], batch: int, threads: int, seconds: float) -> float:
    """Median images/s of 3 runs of ``threads`` threads calling ``call`` (``batch`` images) for ``seconds``."""
    call()  # warm-up

    def loop(stop: float) -> int:
        n = 0
        while time.perf_counter() < stop:
            call()
            n += batch
        return n

    samples = []
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for _ in range(3):
            start = time.perf_counter()
            done = sum(pool.map(loop, [start + seconds] * threads))
            samples.append(done / (time.perf_counter() - start))
    return statistics.median(samples)


def start_server(
    ckpt: Path, index_dir: Path, port: int, settings: dict[str, str], log: Path, module: str = "app.cli"
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        **settings,
        "IMGSIM_ACCESS_LOG": "false",
        "IMGSIM_ENGINE": ENGINE,
        "IMGSIM_QUEUE_MAX": "256",
        "IMGSIM_BATCH_MAX_SIZE": str(BATCH_MAX),
        "IMGSIM_BATCH_MAX_WAIT_MS": "3",
    }
    cmd = [
        sys.executable,
        "-m",
        module,
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


def requests_for(endpoint: str, queries: list[bytes], host: str) -> list[bytes]:
    """Every request of a run, built once: a search with k=10 per query, or a compare of two queries."""
    if endpoint == "search":
        return [multipart_request("/v1/search", host, [("image", "q.jpg", q)], {"k": "10"}) for q in queries]
    n = len(queries)
    pairs = [(queries[i], queries[(i * 7 + 3) % n]) for i in range(n)]
    return [
        multipart_request("/v1/compare", host, [("images", "a.jpg", a), ("images", "b.jpg", b)], {}) for a, b in pairs
    ]


def load(base: str, endpoint: str, queries: list[bytes], concurrency: int, total: int) -> LoadResult:
    url = httpx.URL(base)
    assert url.port is not None
    return asyncio.run(run_load(url.host, url.port, requests_for(endpoint, queries, url.host), concurrency, total))


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(servers: dict[str, tuple[str, int]], queries: list[bytes], quick: bool) -> list[Run]:
    """Each cell runs every mode (base URL, server pid) back to back, reversing the order each time,
    ``repeats`` times: the machine is shared, so throughput and server CPU are medians over repeats and latency
    percentiles pool every request."""
    for base, _ in servers.values():
        load(base, "search", queries, 4, 8)  # warm-up (first passes, thread pools, connections)
    repeats = 1 if quick else 3
    per = {1: 12, 8: 48, 32: 96} if quick else {1: 24, 8: 96, 32: 160}
    runs = []
    for endpoint in ("search", "compare"):
        for c in CONCURRENCY:
            n = per[c] // (2 if endpoint == "compare" else 1)
            rates: dict[str, list[float]] = {m: [] for m in servers}
            cpu: dict[str, list[float]] = {m: [] for m in servers}
            lats: dict[str, list[float]] = {m: [] for m in servers}
            batch_sums = {m: [0.0, 0.0] for m in servers}
            for rep in range(repeats):
                order = list(servers.items())
                for mode, (base, pid) in order if rep % 2 == 0 else order[::-1]:
                    s0, n0 = batch_stats(base)
                    cpu0 = process_cpu_seconds(pid)
                    result = load(base, endpoint, queries, c, n)
                    cpu[mode].append(1000 * (process_cpu_seconds(pid) - cpu0) / n)
                    s1, n1 = batch_stats(base)
                    rates[mode].append(n / result.seconds)
                    lats[mode] += result.latencies
                    batch_sums[mode][0] += s1 - s0
                    batch_sums[mode][1] += n1 - n0
            for mode in servers:
                rps = statistics.median(rates[mode])
                mean_batch = batch_sums[mode][0] / max(batch_sums[mode][1], 1)
                runs.append(
                    Run(
                        endpoint,
                        mode,
                        c,
                        n * repeats,
                        n * repeats / rps,
                        lats[mode],
                        mean_batch,
                        statistics.median(cpu[mode]),
                    )
                )
                print(f"  {endpoint} {mode} c={c}: {rps:.1f} req/s (median of {repeats})", file=sys.stderr)
    return runs


@dataclass
class Overhead:
    """/v1/search at concurrency 8 on the default server with the model skipped (bench/model_skipped.py)."""

    rps: float
    server_cpu_ms: float  # per request: HTTP, multipart, decode and crop, batching, search, the answer
    client_cpu_ms: float  # per request: the load generator, on the same cores


def measure_overhead(base: str, pid: int, queries: list[bytes], quick: bool) -> Overhead:
    load(base, "search", queries, 8, 64)  # warm-up
    n = 200 if quick else 1000
    rates, server, client = [], [], []
    for _ in range(1 if quick else 3):
        cpu0 = process_cpu_seconds(pid)
        result = load(base, "search", queries, 8, n)
        server.append(1000 * (process_cpu_seconds(pid) - cpu0) / n)
        rates.append(n / result.seconds)
        client.append(result.client_cpu_ms)
    return Overhead(statistics.median(rates), statistics.median(server), statistics.median(client))


def ratio_ceiling(model_rate: float, cores: int, overhead_ms: float) -> float:
    """The most /v1/search can reach of ``model_rate`` (images/s, in-process, on ``cores`` cores) if every core
    is busy all the time and each request costs the model's own CPU time per image plus ``overhead_ms``."""
    model_ms = 1000 * cores / model_rate
    return model_ms / (model_ms + overhead_ms)


def run(quick: bool = False) -> str:
    if not (DOGS / "manifest.csv").is_file():
        raise FileNotFoundError(f"Dog photos not found at {DOGS}.")
    torch.set_num_threads(os.cpu_count() or 1)
    gallery = dog_files(15 if quick else 25, 0)
    queries = [p.read_bytes() for p in dog_files(4 if quick else 8, 100)]
    calibration = dog_files(26, 200)  # 260 photos, none of them in the gallery or among the queries
    with tempfile.TemporaryDirectory(prefix="imgsim-bench-") as tmp:
        workdir = Path(tmp)
        ckpt, index_dir, embedder = build(workdir / "default", gallery, calibration=calibration)
        engine_name = f"{embedder.engine_name}, {embedder.precision}"
        model_rates, decode_rate = in_process_rate(embedder, queries, 10 if quick else 20)
        del embedder
        procs = {}
        try:
            for port, (mode, settings) in enumerate(MODES.items(), start=8701):
                log = workdir / f"serve-{port}.log"
                procs[mode] = (port, start_server(ckpt, index_dir, port, settings, log))
            servers = {m: (f"http://127.0.0.1:{port}", proc.pid) for m, (port, proc) in procs.items()}
            runs = measure(servers, queries, quick)
            port = 8701 + len(MODES)
            log = workdir / f"serve-{port}.log"
            procs["model skipped"] = (port, start_server(ckpt, index_dir, port, {}, log, "bench.model_skipped"))
            overhead = measure_overhead(f"http://127.0.0.1:{port}", procs["model skipped"][1].pid, queries, quick)
        finally:
            for _, proc in procs.values():
                proc.terminate()
                proc.wait(timeout=60)
        frontier = measure_frontier(workdir, gallery, calibration, queries, quick)
    return report(runs, overhead, model_rates, decode_rate, engine_name, len(gallery), quick) + frontier_report(
        frontier, quick
    )


BACKBONES = ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2")
FRONTIER = [(bb, p) for bb in BACKBONES for p in ("fp32", "int8")]


def measure_frontier(
    workdir: Path, gallery: list[Path], calibration: list[Path], queries: list[bytes], quick: bool
) -> dict[tuple[str, str], dict[str, float]]:
    """/v1/search at concurrency 8 on the default server settings for each backbone and precision: every server
    up at once, the configurations interleaved repeat by repeat; medians of req/s and server CPU ms/request."""
    configs = FRONTIER[:2] if quick else FRONTIER
    procs: dict[tuple[str, str], tuple[str, subprocess.Popen[bytes]]] = {}
    n, repeats = (48, 1) if quick else (160, 3)
    samples: dict[tuple[str, str], list[tuple[float, float, list[float]]]] = {c: [] for c in configs}
    try:
        for port, (bb, precision) in enumerate(configs, start=8711):
            ckpt, index_dir, _ = build(workdir / f"{bb}-{precision}", gallery, bb, precision, calibration)
            proc = start_server(ckpt, index_dir, port, {}, workdir / f"serve-{port}.log")
            procs[(bb, precision)] = (f"http://127.0.0.1:{port}", proc)
        for base, _ in procs.values():
            load(base, "search", queries, 8, 16)  # warm-up
        for rep in range(repeats):
            order = list(procs.items()) if rep % 2 == 0 else list(procs.items())[::-1]
            for config, (base, proc) in order:
                cpu0 = process_cpu_seconds(proc.pid)
                result = load(base, "search", queries, 8, n)
                cpu = 1000 * (process_cpu_seconds(proc.pid) - cpu0) / n
                samples[config].append((n / result.seconds, cpu, result.latencies))
                print(f"  frontier {config} rep {rep}: {n / result.seconds:.1f} req/s", file=sys.stderr)
    finally:
        for _, proc in procs.values():
            proc.terminate()
            proc.wait(timeout=60)
    out = {}
    for config, runs in samples.items():
        latencies = [x for _, _, lat in runs for x in lat]
        out[config] = {
            "rps": statistics.median(r for r, _, _ in runs),
            "cpu_ms": statistics.median(c for _, c, _ in runs),
            "p50": float(np.percentile(latencies, 50) * 1000),
            "p99": float(np.percentile(latencies, 99) * 1000),
        }
    return out


def frontier_report(frontier: dict[tuple[str, str], dict[str, float]], quick: bool) -> str:
    cores = os.cpu_count() or 1
    base = frontier[("efficientnet-lite0", "fp32")]
    load1, load5, load15 = os.getloadavg()
    lines = [
        "",
        "",
        "/v1/search at concurrency 8 per backbone and precision (default server: batched, 2 instances; "
        f"{'1 run' if quick else 'medians of 3 interleaved runs'} of {'48' if quick else '160'} requests each; "
        f"load average at the end {load1:.2f}, {load5:.2f}, {load15:.2f}; the load generator shares the {cores} "
        "cores). Server CPU ms per request is the figure robust to the machine's load.",
        "",
        "| backbone | precision | req/s | p50 ms | p99 ms | server CPU ms/request | req/s vs lite0 fp32 |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for (bb, precision), r in frontier.items():
        lines.append(
            f"| {bb} | {precision} | {r['rps']:.1f} | {r['p50']:.0f} | {r['p99']:.0f} | {r['cpu_ms']:.2f} | "
            f"{r['rps'] / base['rps']:.2f}x |"
        )
    return "\n".join(lines)


def report(
    runs: list[Run],
    overhead: Overhead,
    model_rates: dict[str, float],
    decode_rate: float,
    engine: str,
    n_gallery: int,
    quick: bool,
) -> str:
    best = max(model_rates, key=lambda k: model_rates[k])
    model_rate = model_rates[best]
    cores = os.cpu_count() or 1
    ceiling = ratio_ceiling(model_rate, cores, overhead.server_cpu_ms + overhead.client_cpu_ms)
    by = {(r.endpoint, r.mode, r.concurrency): r for r in runs}
    lines = [
        "### REST service: /v1/search and /v1/compare over loopback",
        "",
        f"Machine: {platform.platform()}, {os.cpu_count()} CPU cores (shared with the load generator), torch "
        f"{torch.__version__}, faiss {faiss.__version__}, engine `{engine}`, efficientnet-lite0 (224 px, 256-d), "
        f"gallery of {n_gallery} dog photos (exact index), queries are 320-px JPEGs from shared/data/dogs.",
        f"Command: `.venv/bin/python -m bench.bench_service{' --quick' if quick else ''}` "
        f"({datetime.now(UTC):%Y-%m-%d %H:%M} UTC).",
        "",
        "| endpoint | mode | concurrency | requests | req/s | images/s | p50 ms | p99 ms | images per pass "
        "| server CPU ms/request |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        per = 2 if r.endpoint == "compare" else 1
        lines.append(
            f"| /v1/{r.endpoint} | {r.mode} | {r.concurrency} | {r.requests} | {r.rps:.1f} | "
            f"{r.rps * per:.1f} | {r.pct(50):.0f} | {r.pct(99):.0f} | {r.mean_batch:.1f} | {r.server_cpu_ms:.1f} |"
        )
    modes = list(dict.fromkeys(r.mode for r in runs))
    lines += ["", "| endpoint | concurrency | " + " | ".join(f"{m} / {modes[-1]}" for m in modes[:-1]) + " |"]
    lines.append("|---|---:|" + "---:|" * (len(modes) - 1))
    for endpoint in ("search", "compare"):
        for c in CONCURRENCY:
            base = by[(endpoint, modes[-1], c)].rps
            cells = " | ".join(f"{by[(endpoint, m, c)].rps / base:.2f}x" for m in modes[:-1])
            lines.append(f"| /v1/{endpoint} | {c} | {cells} |")
    ratios = "; ".join(
        f"{m}: {by[('search', m, 8)].rps:.1f} / {model_rate:.1f} = **{by[('search', m, 8)].rps / model_rate:.2f}**"
        for m in modes
    )
    lines += [
        "",
        f"Batched: dynamic batching, at most {BATCH_MAX} images per pass, at most 3 ms wait; unbatched: one request "
        "per pass (IMGSIM_BATCHING=false). Instances: forward passes that may run at once (IMGSIM_MODEL_INSTANCES; "
        "with 2, each pass is single-threaded and its instance decodes the batch). Load generator: "
        "bench/http_load.py, keep-alive connections. "
        f"Throughput: median of {1 if quick else 3} run(s) per cell, modes interleaved.",
        "In-process embedding, same model and engine, same run (preprocessed tensors, median of 3): "
        + ", ".join(f"{k}: {r:.1f} images/s" for k, r in model_rates.items())
        + f". JPEG decode + crop alone, one thread: {decode_rate:.0f} images/s.",
        f"End-to-end /v1/search at concurrency 8 / the best in-process embedding ({best}): {ratios} (target ≥ 0.8).",
        f"Model skipped (bench/model_skipped.py: the default server, its forward pass replaced by a copy of one "
        f"real embedding): /v1/search at concurrency 8 {overhead.rps:.0f} req/s, server CPU "
        f"{overhead.server_cpu_ms:.2f} ms/request, load generator {overhead.client_cpu_ms:.2f} ms/request. The model "
        f"itself costs {1000 * cores / model_rate:.2f} CPU ms per image at the in-process best, so even with all "
        f"{cores} cores busy all the time /v1/search could reach at most **{ceiling:.2f}** of it.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer images and requests")
    print(run(quick=parser.parse_args().quick))


if __name__ == "__main__":
    main()
