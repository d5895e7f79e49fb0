"""Embedding speed: the fast path end-to-end from JPEG files and forward-only, against eager PyTorch.

    .venv/bin/python -m bench.bench_embedding [--quick]

Uses efficientnet-lite0 at 224 px with an untrained head (same speed as a trained one), built once under
``runs/bench/`` with a fixed seed so its ONNX export is cached across runs. Every number is measured in the
same run; throughputs are medians over repeats, with the CPU seconds per image (more stable than
throughput on a shared machine) and the load average, since other processes share the cores.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import torch

from model.core.checkpoint import Checkpoint, save_checkpoint
from model.core.device import cpu_count
from model.core.network import ModelConfig, SiameseNetwork
from model.evaluation.metrics import retrieval_metrics
from model.inference.decode import iter_batches
from model.inference.embedder import Embedder
from model.inference.engines import OnnxEngine
from model.inference.workers import CHUNK, default_workers

ROOT = Path(__file__).resolve().parents[1]
DOGS = Path(os.environ.get("IMGSIM_DOGS", ROOT.parent / "shared" / "data" / "dogs"))


def bench_checkpoint() -> Path:
    """The default architecture with an untrained head, named by head kind so a new default is rebuilt."""
    path = ROOT / "runs" / "bench" / f"efficientnet-lite0-{ModelConfig().head}-untrained.pt"
    if not path.is_file():
        torch.manual_seed(0)
        save_checkpoint(Checkpoint(SiameseNetwork(ModelConfig()).eval()), path)
    return path


def dog_photos(n: int) -> list[Path]:
    photos = sorted(DOGS.glob("*/*.jpg"))
    if not photos:
        raise FileNotFoundError(f"No dog photos under {DOGS}; set IMGSIM_DOGS.")
    step = max(1, len(photos) // n)
    return photos[::step][:n]  # spread over every breed


def measure(fn: Callable[[], object], n_images: int, repeats: int) -> dict[str, float]:
    """Median images/s (wall clock) and CPU seconds per image of this process, over ``repeats`` runs."""
    rates, cpu = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        rates.append(n_images / (time.perf_counter() - w0))
        cpu.append((time.process_time() - c0) / n_images)
    return {"ips": statistics.median(rates), "cpu_ms": 1000 * statistics.median(cpu)}


def forward_in_workers(embedder: Embedder, decoded: list[torch.Tensor], workers: int) -> None:
    """The model calls of ``embed_files`` on the CPU (``workers`` threads, one single-threaded call each)."""
    engine = embedder.engine
    assert isinstance(engine, OnnxEngine), "the CPU fast path is ONNX Runtime"
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(engine.run_single_threaded, decoded))


def decoder_threads_then_model(embedder: Embedder, photos: list[Path]) -> None:
    """The other design: decoder threads work ahead of one model call at a time that uses every core."""
    for batch in iter_batches(photos, embedder.preset, 64, workers=cpu_count(), prefetch=cpu_count()):
        embedder.embed_tensors(batch.images)


def cosine_stats(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return {"min": float(cos.min()), "mean": float(cos.mean())}


def machine_line() -> str:
    import faiss

    return (
        f"Machine: `{platform.platform()}`, {platform.processor() or platform.machine()}, "
        f"{cpu_count()} CPU cores, torch {torch.__version__}, faiss {faiss.__version__}, "
        f"onnxruntime {_version('onnxruntime')}"
    )


def _version(name: str) -> str:
    try:
        import importlib.metadata

        return importlib.metadata.version(name)
    except Exception:
        return "not installed"


def run(quick: bool = False) -> str:
    # Eager PyTorch is ~15 images/s on 2 quiet cores (far less when shared): fewer photos keep it minutes.
    n_fast, n_ref, repeats = (256, 64, 2) if quick else (640, 128, 3)
    few = 2  # repeats of the slow reference and of the tuning rows
    ckpt = bench_checkpoint()
    photos, ref_photos = dog_photos(n_fast), dog_photos(n_ref)
    load_before = os.getloadavg()[0]

    fast = Embedder(ckpt, device="cpu", engine="auto")
    ref = Embedder(ckpt, device="cpu", engine="torch")
    preset = fast.preset
    decoded = [b.images for b in iter_batches(photos, preset, CHUNK, workers=cpu_count())]
    fast.embed_files(photos[:64], progress=False)  # warm-up: ORT allocations, page cache
    workers = default_workers()  # embed_files' default on the CPU

    rows: dict[str, dict[str, float]] = {}
    rows["fast end-to-end"] = measure(lambda: fast.embed_files(photos, progress=False), len(photos), repeats)
    # Forward-only in the same arrangement as end-to-end: the same workers and chunks, the decoding taken out.
    rows["fast forward-only"] = measure(lambda: forward_in_workers(fast, decoded, workers), len(photos), repeats)
    rows["decode only (threads)"] = measure(
        lambda: list(iter_batches(photos, preset, CHUNK, workers=cpu_count())), len(photos), repeats
    )
    ref_result = ref.embed_files(ref_photos, progress=False)  # also warms up
    rows["eager PyTorch end-to-end"] = measure(
        lambda: ref.embed_files(ref_photos, progress=False), len(ref_photos), few
    )
    ref_decoded = decoded[0][: min(64, n_ref)]
    rows["eager PyTorch forward-only"] = measure(lambda: ref.embed_tensors(ref_decoded), len(ref_decoded), 1)

    tuning: dict[str, dict[str, float]] = {}
    if not quick:
        for n in (2, 3, 4):
            tuning[f"{n} workers, each decoding and running a 1-thread model"] = measure(
                partial(fast.embed_files, photos, num_workers=n, progress=False), len(photos), few
            )
        tuning["forward-only, one call at a time with every core inside it"] = measure(
            lambda: [fast.embed_tensors(b) for b in decoded], len(photos), few
        )
        tuning[f"{cpu_count()} decoder threads ahead of one call at a time (the CUDA design), ORT no spin"] = measure(
            lambda: decoder_threads_then_model(fast, photos), len(photos), few
        )
        spin = Embedder(ckpt, device="cpu", engine="onnx", spin=True)
        tuning[f"{cpu_count()} decoder threads ahead of one call at a time, ORT spinning"] = measure(
            lambda: decoder_threads_then_model(spin, photos), len(photos), few
        )

    # Neutrality: the fast path's embeddings of the reference's photos, and Recall@1 of both.
    fast_result = fast.embed_files(ref_photos, progress=False)
    labels = [ref_photos[i].parent.name for i in ref_result.ok]
    cos = cosine_stats(ref_result.embeddings, fast_result.embeddings)
    r1_ref = retrieval_metrics(ref_result.embeddings, labels)["recall_at_1"]
    r1_fast = retrieval_metrics(fast_result.embeddings, labels)["recall_at_1"]
    load_after = os.getloadavg()[0]

    e2e, fwd, eager = rows["fast end-to-end"], rows["fast forward-only"], rows["eager PyTorch end-to-end"]
    lines = [
        "### Embedding (efficientnet-lite0, 224 px, JPEGs of 320 px short side)",
        "",
        machine_line() + ".",
        f"Command: `python -m bench.bench_embedding{' --quick' if quick else ''}`. "
        f"Date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC. "
        f"Load average {load_before:.1f} before, {load_after:.1f} after (other processes share the cores).",
        "",
        f"Fast engine: `{fast.engine_name}`; {n_fast} photos for the fast path, {n_ref} for eager PyTorch; "
        f"{CHUNK} images per model call, {workers} workers; medians of {repeats} repeats ({few} for eager PyTorch "
        "and tuning). "
        "CPU ms/img is this process's CPU time per image.",
        "",
        f"Idle-machine projection: {cpu_count()} cores x 1000 / CPU ms/img, what the same work would reach "
        "with the cores to itself (derived, not measured; the measured ratios stand on their own).",
        "",
        "| path | images/s | CPU ms/img | projected images/s | vs eager end-to-end |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, r in rows.items():
        projected = cpu_count() * 1000 / r["cpu_ms"]
        lines.append(
            f"| {name} | {r['ips']:.1f} | {r['cpu_ms']:.1f} | {projected:.0f} | {r['ips'] / eager['ips']:.2f}x |"
        )
    lines += [
        "",
        f"- End-to-end / forward-only of the fast path: **{e2e['ips'] / fwd['ips']:.2f}** (target >= 0.85).",
        f"- Fast end-to-end / eager PyTorch end-to-end: **{e2e['ips'] / eager['ips']:.1f}x** (target >= 5x); "
        f"fast end-to-end {e2e['ips']:.1f} images/s (target >= 80).",
        f"- Embeddings vs eager PyTorch on {len(labels)} photos: cosine min {cos['min']:.7f}, "
        f"mean {cos['mean']:.7f}; Recall@1 {r1_fast:.4f} (fast) vs {r1_ref:.4f} (eager), "
        f"difference {abs(r1_fast - r1_ref):.4f}.",
    ]
    if tuning:
        lines += ["", "Tuning (fast end-to-end):", "", "| setting | images/s | CPU ms/img |", "| --- | ---: | ---: |"]
        lines += [f"| {k} | {v['ips']:.1f} | {v['cpu_ms']:.1f} |" for k, v in tuning.items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer photos and repeats (about a minute)")
    args = parser.parse_args(argv)
    print(run(quick=args.quick))
    return 0


if __name__ == "__main__":
    sys.exit(main())
