"""A/B of ``/v1/search`` between another checkout (the baseline, e.g. the commit before a change) and this one,
measured in the same run: both servers up at once on the same checkpoint and gallery, runs interleaved.

    .venv/bin/python -m bench.ab_search --baseline /path/to/other/checkout [--runs 6] [--model-skipped]

``--model-skipped`` runs both as bench/model_skipped.py does (forward pass replaced by a copy of one real
embedding), so the difference is what everything but the model costs per request. Medians over runs; server
CPU is the server process's CPU time per request.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from bench.bench_service import BATCH_MAX, ENGINE, build, dog_files, load, process_cpu_seconds

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Side:
    name: str
    checkout: Path
    rps: list[float] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)


def start(checkout: Path, ckpt: Path, index_dir: Path, port: int, module: str, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PYTHONPATH": str(checkout),
        "IMGSIM_ACCESS_LOG": "false",
        "IMGSIM_ENGINE": ENGINE,
        "IMGSIM_QUEUE_MAX": "256",
        "IMGSIM_BATCH_MAX_SIZE": str(BATCH_MAX),
    }
    cmd = [sys.executable, "-m", module, "serve", "--port", str(port), "--device", "cpu"]
    cmd += ["--checkpoint", str(ckpt), "--index", str(index_dir)]
    proc = subprocess.Popen(cmd, env=env, cwd=checkout, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"server in {checkout} did not become ready; see {log}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, required=True, help="the other checkout (its own app/, index/)")
    parser.add_argument("--runs", type=int, default=6)
    parser.add_argument("--requests", type=int, default=400, help="per run and side")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--model-skipped", action="store_true")
    args = parser.parse_args()
    module = "bench.model_skipped" if args.model_skipped else "app.cli"
    queries = [p.read_bytes() for p in dog_files(8, 100)]
    sides = [Side("baseline", args.baseline.resolve()), Side("this checkout", ROOT)]
    with tempfile.TemporaryDirectory(prefix="imgsim-ab-") as tmp:
        ckpt, index_dir, _ = build(Path(tmp), dog_files(25, 0))
        procs = {}
        try:
            for port, side in enumerate(sides, start=8761):
                log = Path(tmp) / f"serve-{port}.log"
                procs[side.name] = (port, start(side.checkout, ckpt, index_dir, port, module, log))
            for side in sides:
                load(f"http://127.0.0.1:{procs[side.name][0]}", "search", queries, 4, 32)  # warm-up
            for run in range(args.runs):
                for side in sides if run % 2 == 0 else sides[::-1]:
                    port, proc = procs[side.name]
                    cpu0 = process_cpu_seconds(proc.pid)
                    result = load(f"http://127.0.0.1:{port}", "search", queries, args.concurrency, args.requests)
                    side.cpu_ms.append(1000 * (process_cpu_seconds(proc.pid) - cpu0) / args.requests)
                    side.rps.append(args.requests / result.seconds)
                    side.latencies += result.latencies
                print(f"run {run + 1}: " + ", ".join(f"{s.name} {s.rps[-1]:.1f} req/s" for s in sides), file=sys.stderr)
        finally:
            for _, proc in procs.values():
                proc.terminate()
                proc.wait(timeout=60)
    print(report(sides, args))


def report(sides: list[Side], args: argparse.Namespace) -> str:
    lines = [
        f"/v1/search at concurrency {args.concurrency}, {args.runs} interleaved runs of {args.requests} requests per "
        f"side{' (model skipped)' if args.model_skipped else ''}; engine {ENGINE}, {os.cpu_count()} CPU cores.",
        "",
        "| side | req/s (median) | runs | p50 ms | p99 ms | server CPU ms/request |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for s in sides:
        runs = ", ".join(f"{r:.0f}" for r in s.rps)
        p50, p99 = (float(np.percentile(s.latencies, q) * 1000) for q in (50, 99))
        lines.append(
            f"| {s.name} | {statistics.median(s.rps):.1f} | {runs} | {p50:.0f} | {p99:.0f} | "
            f"{statistics.median(s.cpu_ms):.2f} |"
        )
    ratio = statistics.median(sides[1].rps) / statistics.median(sides[0].rps)
    lines += ["", f"this checkout / baseline: **{ratio:.3f}** (median req/s)"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
