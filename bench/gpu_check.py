"""GPU check for a machine with an NVIDIA GPU, in under 5 minutes: trains a few hundred fine-tuning steps
with AMP on CUDA, embeds every dog photo (CPU JPEG decode and GPU nvJPEG decode), reports steps/s and
images/s, and checks that CUDA and CPU embeddings agree (cosine >= 0.999 per image on a seeded sample).

    bench/gpu_check.sh                      # or: python -m bench.gpu_check [--data DIR] [--out DIR]

Writes ``OUT/gpu_check.json`` and ``OUT/gpu_check.md`` (a BENCHMARKS.md section). Exit codes: 0 all checks
passed, 1 an agreement check failed, 2 no CUDA (or bad options). ``--cpu-smoke`` runs the same steps on the
CPU at toy sizes, to test the script itself on a machine without a GPU; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import inspect
import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

THRESHOLD = 0.999
DEFAULT_DATA = Path(os.environ.get("IMGSIM_DATA_DIR", "../shared/data/dogs"))
NO_CUDA = (
    "gpu_check: no CUDA device is visible to PyTorch (torch {torch}, built for CUDA {cuda}). "
    "This check needs an NVIDIA GPU with its driver; in a container start it with `--gpus all` "
    "(compose: the `api` service's GPU reservation). To test the script itself on a CPU, add --cpu-smoke."
)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of matching rows."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)


def agreement(reference: np.ndarray, other: np.ndarray) -> dict[str, Any]:
    cos = cosine_rows(reference, other)
    return {
        "min_cosine": float(cos.min()),
        "mean_cosine": float(cos.mean()),
        "passed": bool(cos.min() >= THRESHOLD),
    }


def gallery_files(data: Path) -> list[Path]:
    from model.data.galleries import scan_gallery

    gallery = scan_gallery(data)
    return [gallery.absolute(item) for item in gallery.items]


def make_embedder(checkpoint: Path, device: str, **options: Any) -> Any:
    """An Embedder with the options this version supports (``engine``, ``gpu_decode``)."""
    from model.inference.embedder import Embedder

    accepted = inspect.signature(Embedder.__init__).parameters
    return Embedder(checkpoint, device=device, **{k: v for k, v in options.items() if k in accepted})


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_training(data: Path, out: Path, device: str, steps: int, extra: list[str]) -> dict[str, Any]:
    from model.core.checkpoint import load_checkpoint
    from model.training.train import main as train_main

    # A large patience so early stopping cannot end the run before --max-steps.
    argv = [
        "--data",
        str(data),
        "--out",
        str(out),
        "--device",
        device,
        "--mode",
        "finetune",
        "--max-steps",
        str(steps),
        "--patience",
        "1000",
        *extra,
    ]
    start = time.perf_counter()
    code = train_main(argv)
    synchronize(device)
    wall = time.perf_counter() - start
    if code:
        raise RuntimeError(f"imgsim train {shlex.join(argv)} failed with exit code {code}")
    done = steps
    last = out / "last.pt"
    if last.is_file():  # the steps really taken, as recorded for --resume
        done = int(load_checkpoint(last).extra.get("step", steps))
    metrics = json.loads((out / "metrics.json").read_text()) if (out / "metrics.json").is_file() else {}
    loop = float(metrics.get("train_seconds") or wall)
    # train_seconds covers the training loop (with its per-epoch validation); wall adds start-up and the
    # final evaluation, so wall steps/s is the lower bound.
    return {
        "command": f"imgsim train {shlex.join(argv)}",
        "steps": done,
        "seconds": loop,
        "wall_seconds": wall,
        "steps_per_s": done / loop,
        "wall_steps_per_s": done / wall,
    }


def time_embedding(
    checkpoint: Path, files: Sequence[Path], device: str, gpu_decode: bool, batch_size: int
) -> dict[str, Any]:
    embedder = make_embedder(checkpoint, device, engine="torch", gpu_decode=gpu_decode)
    embedder.embed_files(files[:batch_size], batch_size=batch_size, progress=False)  # warm-up: cuDNN, nvJPEG
    synchronize(device)
    start = time.perf_counter()
    result = embedder.embed_files(files, batch_size=batch_size, progress=True)
    synchronize(device)
    seconds = time.perf_counter() - start
    return {
        "images": len(result.ok),
        "failures": len(result.failures),
        "seconds": seconds,
        "images_per_s": len(result.ok) / seconds,
        "gpu_decode": bool(getattr(embedder, "gpu_decode", False)),
    }


def check_agreement(checkpoint: Path, files: Sequence[Path], device: str) -> dict[str, Any]:
    """Embeddings of the same files by the device (fp16 autocast, CPU or GPU decode) vs the CPU fp32
    reference (eager PyTorch, Pillow decode)."""
    reference = make_embedder(checkpoint, "cpu", engine="torch").embed_files(files, progress=False)
    results = {}
    for name, gpu_decode in (("cpu_decode", False), ("gpu_decode", True)):
        got = make_embedder(checkpoint, device, engine="torch", gpu_decode=gpu_decode).embed_files(
            files, progress=False
        )
        if got.ok != reference.ok:
            raise RuntimeError(f"{name}: embedded {len(got.ok)} files, the CPU reference {len(reference.ok)}")
        results[name] = agreement(reference.embeddings, got.embeddings)
    return results


def machine(device: str) -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "device": device,
    }
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(device)
        info.update(
            gpu=props.name,
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            capability=f"{props.major}.{props.minor}",
            cudnn=torch.backends.cudnn.version(),
        )
    return info


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    gpu = f"{m.get('gpu', 'no GPU')} ({m.get('gpu_memory_gib', '-')} GiB, sm {m.get('capability', '-')})"
    lines = [
        "### GPU check" + (" (CPU smoke run: numbers are not benchmarks)" if report["smoke"] else ""),
        "",
        f"Machine: {gpu}, {m['platform']}, {m['cpus']} CPUs, torch {m['torch']} (CUDA {m['torch_cuda']}).",
        f"Command: `{report['command']}`. Date: {report['date']}.",
        "",
        "| step | figure |",
        "| --- | --- |",
        f"| train ({report['train']['steps']} fine-tuning steps, AMP) | "
        f"{report['train']['steps_per_s']:.2f} steps/s in the training loop ({report['train']['seconds']:.1f} s; "
        f"{report['train']['wall_steps_per_s']:.2f} steps/s over {report['train']['wall_seconds']:.1f} s wall) |",
    ]
    for name, row in report["embed"].items():
        lines.append(
            f"| embed {row['images']} photos, {name.replace('_', ' ')} | "
            f"{row['images_per_s']:.0f} images/s ({row['seconds']:.1f} s) |"
        )
    for name, row in report["agreement"].items():
        verdict = "pass" if row["passed"] else "FAIL"
        lines.append(
            f"| {m['device']} vs CPU embeddings, {name.replace('_', ' ')} ({report['sample']} photos) | "
            f"min cosine {row['min_cosine']:.5f}, mean {row['mean_cosine']:.5f}: {verdict} "
            f"(>= {THRESHOLD}) |"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench.gpu_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder-per-class photos (%(default)s)")
    p.add_argument("--out", type=Path, default=Path("runs/gpu_check"), help="results folder (%(default)s)")
    p.add_argument("--steps", type=int, default=300, help="fine-tuning steps (%(default)s)")
    p.add_argument("--sample", type=int, default=256, help="photos in the agreement check (%(default)s)")
    p.add_argument("--batch-size", type=int, default=128, help="embedding batch size (%(default)s)")
    p.add_argument("--train-args", default="", help="extra `imgsim train` options, one string")
    p.add_argument("--cpu-smoke", action="store_true", help="run on the CPU at toy sizes (tests the script)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.cpu_smoke and not torch.cuda.is_available():
        print(NO_CUDA.format(torch=torch.__version__, cuda=torch.version.cuda), file=sys.stderr)
        return 2
    device = "cpu" if args.cpu_smoke else "cuda"
    if not args.data.is_dir():
        print(f"gpu_check: no photos at {args.data}; pass --data DIR (one folder per class).", file=sys.stderr)
        return 2
    files = gallery_files(args.data)
    rng = np.random.default_rng(0)
    sample = [files[i] for i in sorted(rng.choice(len(files), size=min(args.sample, len(files)), replace=False))]
    args.out.mkdir(parents=True, exist_ok=True)
    run_dir = args.out / "run"

    train = time_training(args.data, run_dir, device, args.steps, shlex.split(args.train_args))
    checkpoint = run_dir / "best.pt"
    embed = {
        "cpu_decode": time_embedding(checkpoint, files, device, gpu_decode=False, batch_size=args.batch_size),
        "gpu_decode": time_embedding(checkpoint, files, device, gpu_decode=True, batch_size=args.batch_size),
    }
    report = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "bench/gpu_check.sh " + shlex.join(list(argv if argv is not None else sys.argv[1:])),
        "smoke": args.cpu_smoke,
        "machine": machine(device),
        "train": train,
        "embed": embed,
        "sample": len(sample),
        "agreement": check_agreement(checkpoint, sample, device),
    }
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    text = markdown(report)
    (args.out / "gpu_check.md").write_text(text)
    print(text)
    return 0 if all(row["passed"] for row in report["agreement"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
