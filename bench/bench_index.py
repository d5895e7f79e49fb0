"""Gallery index benchmark: build time, memory per vector, single-query p50/p99, batch QPS, recall@10.

Data: a Gaussian mixture on the unit sphere (1,000 centres in 256-d, each point = centre + isotropic noise
of norm ~0.6, normalised), queries drawn from the same mixture. Uniform random vectors have no
neighbourhood structure at all and make every ANN index look worse than it does on real embeddings.

    .venv/bin/python -m bench.bench_index [--quick] [--sizes 10000,100000,1000000] [--hnsw]
"""

from __future__ import annotations

import argparse
import datetime
import gc
import importlib.metadata
import os
import platform
import sys
import time
from dataclasses import dataclass

import faiss
import numpy as np

from index.factory import _nlist, apply_search_params, make_index, min_train_size, training_sample

DIM, CENTRES, NOISE = 256, 1000, 0.6
N_SINGLE, N_BATCH, K = 200, 1000, 10


def mixture(n: int, seed: int, chunk: int = 100_000) -> np.ndarray:
    centres = np.random.default_rng(12345).standard_normal((CENTRES, DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    rng = np.random.default_rng(seed)
    out = np.empty((n, DIM), dtype=np.float32)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        x = centres[rng.integers(0, CENTRES, m)]
        x += NOISE * rng.standard_normal((m, DIM), dtype=np.float32) / np.sqrt(DIM)
        out[start : start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


@dataclass
class Row:
    factory: str
    knobs: str
    build_s: float
    bytes_per_vector: float
    p50_ms: float
    p99_ms: float
    qps: float
    recall: float


def measure(index: faiss.Index, queries: np.ndarray, truth: np.ndarray) -> tuple[float, float, float, float]:
    latencies = []
    for q in queries[:N_SINGLE]:
        t = time.perf_counter()
        index.search(q[None, :], K)
        latencies.append(time.perf_counter() - t)
    t = time.perf_counter()
    _, found = index.search(queries, K)
    qps = len(queries) / (time.perf_counter() - t)
    recall = float(np.mean([len(set(f) & set(g)) / K for f, g in zip(found, truth, strict=True)]))
    p50, p99 = np.percentile(latencies, [50, 99]) * 1000
    return float(p50), float(p99), qps, recall


def build(factory: str, x: np.ndarray) -> tuple[faiss.Index, str, float]:
    start = time.perf_counter()
    index, used = make_index(factory, DIM)
    if not index.is_trained:
        index.train(training_sample(x, min_train_size(index)))
    index.add_with_ids(x, np.arange(len(x), dtype=np.int64))
    return index, used, time.perf_counter() - start


def ivf_pq_from(ivf_flat: faiss.Index, x: np.ndarray, m: int = 64) -> tuple[faiss.Index, float]:
    """IVF-PQ on the coarse quantizer IVF-Flat already trained (the builder would train the same one)."""
    start = time.perf_counter()
    flat = faiss.downcast_index(ivf_flat)
    quantizer = faiss.clone_index(flat.quantizer)
    index = faiss.IndexIVFPQ(quantizer, DIM, flat.nlist, m, 8, faiss.METRIC_INNER_PRODUCT)
    index.own_fields = True
    quantizer.this.disown()
    index.do_polysemous_training = False
    index.train(training_sample(x, 256))
    index.add_with_ids(x, np.arange(len(x), dtype=np.int64))
    return index, time.perf_counter() - start


def bench_size(n: int, hnsw: bool) -> list[Row]:
    """Every type the builder can choose: exact, IVF-Flat, IVF-PQ with and without exact re-ranking."""
    x = mixture(n, seed=1)
    queries = mixture(N_BATCH, seed=2)
    nlist = _nlist(n)
    rows: list[Row] = []

    def record(index: faiss.Index, name: str, build_s: float, knob_sets: list[dict[str, float]]) -> None:
        size = faiss.serialize_index(index).nbytes / n
        for knobs in knob_sets:
            apply_search_params(index, knobs)
            p50, p99, qps, recall = measure(index, queries, truth)
            label = ", ".join(f"{k}={v:g}" for k, v in knobs.items()) or "exact"
            rows.append(Row(name, label, build_s, size, p50, p99, qps, recall))
            print(f"n={n:,} {name} {label}: p50 {p50:.3f} ms recall {recall:.3f}", file=sys.stderr, flush=True)

    exact, _, build_s = build("IDMap2,Flat", x)
    truth = exact.search(queries, K)[1]
    record(exact, "IDMap2,Flat", build_s, [{}])
    del exact
    gc.collect()
    ivf, name, ivf_s = build(f"IVF{nlist},Flat", x)
    record(ivf, name, ivf_s, [{"nprobe": p} for p in (8, 16, 32, 64) if p <= nlist // 4])
    coarse_s = ivf_s  # what training the shared coarse quantizer cost, at most
    pq, pq_s = ivf_pq_from(ivf, x)
    del ivf
    gc.collect()
    probe = {"nprobe": min(64, nlist // 4)}
    record(pq, f"IVF{nlist},PQ64", coarse_s + pq_s, [probe])
    refined = faiss.IndexRefineFlat(pq, faiss.swig_ptr(x))
    record(refined, f"IVF{nlist},PQ64,RFlat", coarse_s + pq_s, [{**probe, "k_factor": f} for f in (4, 16)])
    del refined, pq
    gc.collect()
    if hnsw:
        index, name, build_s = build("HNSW32", x)
        record(index, name, build_s, [{"efSearch": e} for e in (64, 128)])
    return rows


def run(quick: bool = False, sizes: list[int] | None = None, hnsw: bool = True) -> str:
    # One FAISS thread: on a shared 2-core machine OpenMP's spinning threads made training 3x slower and
    # single-query latency erratic; single queries do not use more than one thread anyway.
    faiss.omp_set_num_threads(1)
    sizes = sizes or ([10_000, 100_000] if quick else [10_000, 100_000, 1_000_000])
    command = "python -m bench.bench_index " + " ".join(sys.argv[1:])
    lines = [
        "### Gallery index (bench/bench_index.py)",
        f"{platform.platform()}, {os.cpu_count()} CPUs, faiss {importlib.metadata.version('faiss-cpu')}, "
        f"numpy {np.__version__}, FAISS threads {faiss.omp_get_max_threads()}; `{command.strip()}`; "
        f"{datetime.date.today()}.",
        f"Data: {DIM}-d Gaussian mixture ({CENTRES} centres, noise norm {NOISE}), unit-normalised; {N_BATCH} "
        f"queries from the same mixture. Latency: {N_SINGLE} single-vector searches, k={K}; QPS: one batch of "
        f"{N_BATCH}. Recall@10 against the exact index. Speed-up = exact p50 / this p50. "
        "IVF-PQ reuses IVF-Flat's coarse quantizer "
        "(its build time includes that training).",
    ]
    for n in sizes:
        rows = bench_size(n, hnsw and n <= 100_000)
        exact_p50 = rows[0].p50_ms
        lines += [
            "",
            f"**{n:,} vectors**",
            "",
            "| index | search knobs | build s | bytes/vector | p50 ms | p99 ms | batch QPS | recall@10 | speed-up |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        lines += [
            f"| `{r.factory}` | {r.knobs} | {r.build_s:.1f} | {r.bytes_per_vector:.0f} | {r.p50_ms:.3f} | "
            f"{r.p99_ms:.3f} | {r.qps:,.0f} | {r.recall:.3f} | {exact_p50 / r.p50_ms:.1f}× |"
            for r in rows
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="10k and 100k only")
    parser.add_argument("--sizes", default=None, help="comma-separated sizes, e.g. 1000000")
    parser.add_argument("--no-hnsw", action="store_true", help="skip the HNSW reference rows")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else None
    print(run(args.quick, sizes, hnsw=not args.no_hnsw))


if __name__ == "__main__":
    main()
