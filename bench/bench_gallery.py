"""Gallery storage benchmark (issue 12): durable writes, group commit, search during writes, open + replay,
compaction and memory, at 10k, 100k, 1M (``IDMap2,Flat``) and 10M (IVF-PQ), with the design it replaced
(a whole snapshot per change, from git) measured in the same run as the baseline.

    .venv/bin/python -m bench.bench_gallery [--quick] [--sizes 10000,100000] [--no-10m] [--keep DIR]

Vectors are given (no embedding): bench/gallery_data.py. Each measurement runs in its own process
(bench/gallery_workers.py), so memory figures are that process's alone. ``--quick`` (10k and 100k, no
10M) is what the test suite's smoke test and ``run_all --quick`` run.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BASELINE_REF = "0f37d9c"  # the last commit with the snapshot-per-change gallery
BASELINE_MAX = 1_000_000
IVF_PQ = "IVF2048_HNSW32,PQ64"  # the 10M type (+ re-ranking from disk): the section's notes say why
IVF_TRAIN = 65_536


def worker(kind: str, index_dir: Path, n: int, *extra: str, pythonpath: str | None = None) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": pythonpath or str(ROOT)}
    cmd = [sys.executable, "-m", "bench.gallery_workers", kind, str(index_dir), str(n), *extra]
    print(f"[bench_gallery] {kind} n={n:,} {' '.join(extra)}", file=sys.stderr, flush=True)
    # Not run from the repository: ``-m`` puts the working folder first on sys.path, and the baseline's
    # ``index`` package must win over this one.
    done = subprocess.run(cmd, cwd=index_dir.parent, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{kind} n={n} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def old_code(workdir: Path) -> Path | None:
    """The baseline's ``index/`` package, from git, in a folder of its own (None without git)."""
    target = workdir / "baseline"
    try:
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", BASELINE_REF, "index"], capture_output=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    target.mkdir()
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target


def measure_size(workdir: Path, n: int, quick: bool, baseline_path: Path | None, pending: int) -> dict[str, Any]:
    row: dict[str, Any] = {"n": n, "factory": "IDMap2,Flat"}
    folder = workdir / f"g{n}"
    row["build"] = worker("build", folder, n)
    row["writes"] = worker("writes", folder, n, "--pending", str(pending), *(["--quick"] if quick else []))
    row["reopen"] = worker("reopen", folder, n)
    shutil.rmtree(folder)
    if baseline_path is not None and n <= BASELINE_MAX:
        old = workdir / f"old{n}"
        row["baseline"] = worker("baseline", old, n, pythonpath=f"{baseline_path}{os.pathsep}{ROOT}")
        shutil.rmtree(old)
    return row


def measure_10m(workdir: Path, n: int) -> dict[str, Any]:
    row: dict[str, Any] = {"n": n, "factory": IVF_PQ}
    folder = workdir / f"g{n}"
    row["build"] = worker("build", folder, n, "--factory", IVF_PQ, "--train", str(IVF_TRAIN), "--rerank")
    row["recall"] = worker("reopen", folder, n, "--recall")  # the base alone, before any change
    row["writes"] = worker("writes", folder, n)
    row["reopen"] = worker("reopen", folder, n)
    shutil.rmtree(folder)
    return row


def _ms(d: dict[str, float]) -> str:
    return f"{d['p50']:.2f} / {d['p99']:.2f}"


def report(rows: list[dict[str, Any]], command: str, seconds: float, load: str) -> str:
    lines = [
        "### Gallery storage (bench/bench_gallery.py)",
        f"{platform.platform()}, {os.cpu_count()} CPUs, faiss {importlib.metadata.version('faiss-cpu')}; "
        f"`{command}`; {datetime.date.today()}; {seconds / 60:.0f} min; load average {load}.",
        "Vectors: 256-d, 1,000 clusters with a 16-d subspace each (bench/gallery_data.py). One process per "
        "measurement. Latencies p50 / p99 in ms; a durable change is acknowledged after its log fsync. "
        "Baseline: the snapshot-per-change gallery (git "
        f"{BASELINE_REF}), same machine, same run, median of 3.",
        "",
        "| items | index | durable add p50 / p99 | remove p50 / p99 | baseline add (+save) | baseline remove | "
        "16 writers | search alone p50 / p99 | during 100 changes/s | p99 ratio |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        w, b = r["writes"], r.get("baseline")
        s = w["search"]
        ratio = s["during"]["p99"] / s["alone"]["p99"]
        lines.append(
            f"| {r['n']:,} | `{r['factory']}` | {_ms(w['add'])} | {_ms(w['remove'])} | "
            + (f"{b['add_s'] * 1000:,.0f} | {b['remove_s'] * 1000:,.0f} | " if b else "– | – | ")
            + f"{w['writers16']['adds_per_s']:,.0f} adds/s ({w['writers16']['adds'] / w['writers16']['fsyncs']:.1f}"
            f" per fsync) | {_ms(s['alone'])} | {_ms(s['during'])} ({s['changes_per_s']:.0f}/s) | {ratio:.2f}× |"
        )
    lines += [
        "",
        "| items | build (bulk) s | open + replay of pending changes | baseline open | compaction of them | "
        "RSS after open: anon / file MiB | peak RSS MiB |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        o, b = r["reopen"], r.get("baseline")
        mem = o["rss_open"]
        lines.append(
            f"| {r['n']:,} | {r['build']['build_s']:.1f} | {o['open_s']:.2f} s ({o['pending']:,} changes) | "
            + (f"{b['open_s']:.2f} s | " if b else "– | ")
            + f"{o.get('compact_s', 0):.1f} s | {mem['RssAnon']:,.0f} / {mem['RssFile']:,.0f} | "
            f"{o['rss_end']['VmHWM']:,.0f} |"
        )
    for r in (r for r in rows if "recall" in r):
        rec = r["recall"]
        lines += [
            "",
            f"{r['n']:,} items, `{r['factory']}` + re-ranking from an 8-bit copy on disk (index/rerank.py), "
            f"default knobs: recall@10 against exact **{rec['recall']:.3f}**, search p50 / p99 {_ms(rec['search'])} ms "
            f"(one thread); resident after open and 200 searches: {rec['rss_open']['RssAnon']:,.0f} MiB anon + "
            f"{rec['rss_open']['RssFile']:,.0f} MiB file-backed; after the sweep below "
            f"{rec['rss_sweep']['RssAnon']:,.0f} + {rec['rss_sweep']['RssFile']:,.0f} MiB.",
            "",
            "| nprobe | candidates re-ranked per result | recall@10 | p50 ms | p99 ms |",
            "|---:|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {s['nprobe']} | {s['rerank'] if s['rerank'] > 1 else '1 (the PQ top 10 only)'} | {s['recall']:.3f} | "
            f"{s['p50']:.2f} | {s['p99']:.2f} |"
            for s in rec["sweep"]
        ]
    return "\n".join(lines)


def run(
    quick: bool = False,
    sizes: list[int] | None = None,
    ten_million: bool = True,
    keep: Path | None = None,
    pending: int = 10_000,
) -> str:
    sizes = sizes or ([10_000, 100_000] if quick else [10_000, 100_000, 1_000_000])
    command = "python -m bench.bench_gallery " + " ".join(sys.argv[1:])
    load_before = " ".join(f"{v:.1f}" for v in os.getloadavg())
    started = datetime.datetime.now()
    workdir = Path(tempfile.mkdtemp(prefix="bench_gallery_", dir=keep))
    try:
        baseline_path = old_code(workdir)
        rows = [measure_size(workdir, n, quick, baseline_path, pending) for n in sizes]
        if ten_million and not quick:
            rows.append(measure_10m(workdir, 10_000_000))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    load = f"{load_before} before, {' '.join(f'{v:.1f}' for v in os.getloadavg())} after"
    return report(rows, command.strip(), (datetime.datetime.now() - started).total_seconds(), load)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="10k and 100k only")
    parser.add_argument("--sizes", default=None, help="comma-separated sizes, e.g. 1000000")
    parser.add_argument("--no-10m", action="store_true", help="skip the 10M IVF-PQ gallery")
    parser.add_argument("--keep", type=Path, default=None, help="work folder parent (default: system temp)")
    parser.add_argument("--pending", type=int, default=10_000, help="logged changes that open replays")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else None
    print(run(args.quick, sizes, not args.no_10m, args.keep, args.pending))


if __name__ == "__main__":
    main()
