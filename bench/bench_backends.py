"""The two gallery backends on the same vectors (issue 13): durable single adds, search p50/p99 (with and
without a label filter) and recall@10 against exact answers, at 100k and 1M 256-d vectors.

    nice -n 10 .venv/bin/python -m bench.bench_backends [--quick] [--sizes 100000,1000000] [--backends ...]
        [--milvus-lite-path DIR]

Backends: ``faiss`` (the embedded gallery: its base written in bulk with the factory ``imgsim index build``
picks for the size, then opened as the writer), ``milvus-lite`` (Milvus Lite, FLAT: exact, the backend's
default there), ``milvus-lite-ivf`` (IVF_FLAT, nlist 1024, nprobe 32) and ``milvus-lite-hnsw`` (HNSW M=32,
efConstruction 200, ef 64: Milvus Lite 3.x and servers only; Lite 2.x offers FLAT, IVF_FLAT, AUTOINDEX). Milvus Lite is
filled with durable ``commit_add`` chunks of 10,000 (it has no bulk path through the gallery). Each
measurement runs in its own process; vectors are bench/gallery_data.py's (clusters with low-dimensional
structure). Milvus Lite 2.x runs Milvus's own C++ engine (segcore, knowhere) in a local process; Milvus Lite
3.x is a Python re-implementation of Milvus's API (numpy brute force, about 0.5 s per search of 10k vectors
here): use ``--milvus-lite-path`` to measure 2.x. A Milvus server or cluster (segments sealed and indexed in
the background, a message-queue WAL, network hops) has other costs: these numbers compare the code paths
on this machine, not Milvus at scale.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
K, QUERIES, SINGLE_ADDS, CHUNK = 10, 200, 200, 10_000


def _percentiles(ms: list[float]) -> dict[str, float]:
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def _items(start: int, n: int) -> list[Any]:
    from bench import gallery_data as data
    from index import NewItem

    return [NewItem(f"c/{i}.jpg", f"label{i % 50}", data.sha(i, "b"), 640, 480) for i in range(start, start + n)]


def _chunks(n: int, truth: Any) -> Iterator[tuple[np.ndarray, list[Any]]]:
    from bench import gallery_data as data

    for start, x in data.chunks(n, seed=1, size=CHUNK):
        truth.update(start, x)
        yield x, _items(start, len(x))


def _fill(backend: str, where: Path, n: int, truth: Any) -> Any:
    from bench.gallery_data import DIM

    if backend == "faiss":
        from index import GalleryIndex, choose_factory
        from index.bulk import create_gallery

        create_gallery(
            where, _chunks(n, truth), model_hash="b" * 64, backbone="bench", dim=DIM, factory=choose_factory(n, DIM)
        )
        return GalleryIndex.open(where, writer=True)
    from index.backend import parse_location
    from index.milvus import MilvusGallery

    kind = {"milvus-lite": "FLAT", "milvus-lite-ivf": "IVF_FLAT", "milvus-lite-hnsw": "HNSW"}[backend]
    gallery = MilvusGallery.create(
        parse_location(f"{where}.db"), model_hash="b" * 64, backbone="bench", dim=DIM, index_type=kind
    )
    for x, items in _chunks(n, truth):
        gallery.commit_add(x, items)
    return gallery


def worker(backend: str, where: Path, n: int) -> dict[str, Any]:
    import faiss

    from bench import gallery_data as data
    from bench.gallery_workers import _TopK

    faiss.omp_set_num_threads(1)  # one FAISS thread each: the shared 2-core machine (as bench_gallery)
    queries = data.vectors(QUERIES, seed=2)
    truth = _TopK(queries, K)
    started = time.perf_counter()
    gallery = _fill(backend, where, n, truth)
    row: dict[str, Any] = {"backend": backend, "n": n, "load_s": time.perf_counter() - started}
    # Milvus ids are time-ordered: the i-th item added has the i-th smallest id.
    ids_in_order = np.asarray(sorted(r.id for r in gallery.all_records())) if backend != "faiss" else None
    searched, filtered, found = [], [], []
    for q in queries:
        t = time.perf_counter()
        hits = gallery.search(q[None], K)[0]
        searched.append((time.perf_counter() - t) * 1000)
        found.append([h.id for h in hits])
        t = time.perf_counter()
        gallery.search(q[None], K, label="label7")
        filtered.append((time.perf_counter() - t) * 1000)
    expected = truth.ids if ids_in_order is None else ids_in_order[truth.ids]
    row["recall_at_10"] = float(
        np.mean([len(set(f) & set(e)) / K for f, e in zip(found, expected.tolist(), strict=True)])
    )
    row["search"] = _percentiles(searched)
    row["search_label"] = _percentiles(filtered)
    extra = data.vectors(SINGLE_ADDS, seed=3)
    adds = []
    for i in range(SINGLE_ADDS):
        t = time.perf_counter()
        gallery.commit_add(extra[i : i + 1], _items(n + i, 1))  # durable when it returns
        adds.append((time.perf_counter() - t) * 1000)
    row["single_add"] = _percentiles(adds)
    row["max_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    gallery.close()
    return row


def worker_row(backend: str, n: int, workdir: Path, lite_path: str | None) -> dict[str, Any]:
    where = workdir / f"{backend}-{n}"
    print(f"[bench_backends] {backend} n={n:,}", file=sys.stderr, flush=True)
    cmd = [sys.executable, "-m", "bench.bench_backends", "--worker", backend, str(where), str(n)]
    path = f"{lite_path}{os.pathsep}{ROOT}" if lite_path and backend != "faiss" else str(ROOT)
    done = subprocess.run(cmd, env={**os.environ, "PYTHONPATH": path}, capture_output=True, text=True)
    shutil.rmtree(where, ignore_errors=True)
    shutil.rmtree(f"{where}.db", ignore_errors=True)
    if done.returncode != 0:
        return {"backend": backend, "n": n, "error": done.stderr.strip().splitlines()[-1][-300:]}
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def lite_version(lite_path: str | None) -> str:
    code = "import importlib.metadata as m; print(m.version('milvus-lite'))"
    env = {**os.environ, "PYTHONPATH": lite_path or ""}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True).stdout.strip()


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| backend | n | load s | add p50 / p99 ms | search p50 / p99 ms | label search p50 / p99 ms | recall@10 "
        "| max RSS MiB |"
    )
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['backend']} | {r['n']:,} | failed: {r['error']} |||||")
            continue
        pct = lambda d: f"{d['p50_ms']:.2f} / {d['p99_ms']:.2f}"  # noqa: E731
        lines.append(
            f"| {r['backend']} | {r['n']:,} | {r['load_s']:.0f} | {pct(r['single_add'])} | {pct(r['search'])} | "
            f"{pct(r['search_label'])} | {r['recall_at_10']:.3f} | {r['max_rss_mib']:.0f} |"
        )
    return "\n".join(lines)


def run(
    quick: bool = False,
    sizes: list[int] | None = None,
    backends: list[str] | None = None,
    lite_path: str | None = None,
    json_out: Path | None = None,
) -> str:
    """The Markdown section (``bench.run_all``): 10k on FAISS and Milvus Lite with ``quick``, else 100k and 1M
    on every backend. ``lite_path`` (or ``BENCH_MILVUS_LITE_PATH``): see ``--milvus-lite-path``."""
    sizes = sizes or ([10_000] if quick else [100_000, 1_000_000])
    backends = backends or (["faiss", "milvus-lite"] if quick else ["faiss", "milvus-lite", "milvus-lite-ivf"])
    lite_path = lite_path or os.environ.get("BENCH_MILVUS_LITE_PATH")
    load_before = " ".join(f"{v:.1f}" for v in os.getloadavg())
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-backends-") as tmp:
        for n in sizes:
            for backend in backends:
                rows.append(worker_row(backend, n, Path(tmp), lite_path))
                print(table(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    if json_out:
        json_out.write_text(json.dumps(rows, indent=2))
    load = f"{load_before} before, {' '.join(f'{v:.1f}' for v in os.getloadavg())} after"
    command = "python -m bench.bench_backends " + " ".join(sys.argv[1:])
    return "\n".join(
        [
            "### Gallery backends (bench/bench_backends.py)",
            f"{platform.platform()}, {os.cpu_count()} CPUs, milvus-lite {lite_version(lite_path)}; "
            f"`{command.strip()}`; {datetime.date.today()}; {(time.perf_counter() - started) / 60:.0f} min; "
            f"load average {load}.",
            "",
            table(rows),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10k, FAISS and Milvus Lite FLAT only")
    parser.add_argument("--sizes", default=None, help="comma-separated, e.g. 100000,1000000")
    parser.add_argument("--backends", default=None, help="faiss,milvus-lite,milvus-lite-ivf,milvus-lite-hnsw")
    parser.add_argument("--worker", nargs=3, metavar=("BACKEND", "WHERE", "N"), help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument(
        "--milvus-lite-path",
        help="a folder put first on the Milvus workers' path, holding another milvus-lite: e.g. the C++ engine, "
        "pip install --target DIR milvus-lite==2.5.1 'setuptools<81' (3.x is a Python engine, see the docstring)",
    )
    args = parser.parse_args()
    if args.worker:
        backend, where, n = args.worker
        print(json.dumps(worker(backend, Path(where), int(n))))
        return
    sizes = [int(v) for v in args.sizes.split(",")] if args.sizes else None
    backends = args.backends.split(",") if args.backends else None
    print(run(args.quick, sizes, backends, args.milvus_lite_path, args.json))


if __name__ == "__main__":
    main()
