"""Retrieval quality on ../shared/data/dogs: what training buys over the frozen backbone, closed and open set.

    .venv/bin/python -m bench.bench_quality [--quick]

Every run is the real ``imgsim train`` with default settings (frozen efficientnet-lite0 features, anchored
256-d head, class-balanced batches, contrastive loss), its metrics measured against the frozen backbone in
the same run:
- closed set: 20 % of each breed's images held out, queried against all the others;
- open set: 4 of the 10 breeds held out whole (3 seeded draws), leave-one-out among their images;
- the naive head (``--head mlp``, two layers from random init) on the same open splits, for comparison;
- ``seed-cnn`` (the article's network) from scratch in fine-tuning mode, on a CPU time budget.
Features are cached under runs/bench/cache, so only the first run pays for them (its time is reported).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import time
from pathlib import Path
from typing import Any

from bench.bench_embedding import machine_line
from model.training.args import get_args_parser
from model.training.train import train

ROOT = Path(__file__).resolve().parents[1]
DOGS = Path(os.environ.get("IMGSIM_DOGS", ROOT.parent / "shared" / "data" / "dogs"))
WORK = ROOT / "runs" / "bench" / "quality"
SEED_CNN_STEPS = 30


def train_run(name: str, *extra: str) -> tuple[dict[str, Any], float]:
    argv = ["--data", str(DOGS), "--out", str(WORK / name), "--cache-dir", str(WORK / "cache"), "--no-progress"]
    start = time.perf_counter()
    metrics = train(get_args_parser().parse_args([*argv, *extra]))
    return metrics, time.perf_counter() - start


def row(label: str, m: dict[str, Any]) -> str:
    b = m["baseline"]
    cells = [f"{m[k]:.3f} ({b[k]:.3f})" for k in ("recall_at_1", "recall_at_5", "map_at_r", "roc_auc")]
    return f"| {label} | " + " | ".join(cells) + f" | {m['recall_at_1'] - b['recall_at_1']:+.3f} |"


def run(quick: bool = False) -> str:
    if not DOGS.is_dir():
        raise FileNotFoundError(f"No dog photos at {DOGS}; set IMGSIM_DOGS.")
    first_cache = not (WORK / "cache").is_dir()
    closed, closed_seconds = train_run("closed")
    seeds = (0,) if quick else (0, 1, 2)
    opens = [train_run(f"open-{s}", "--num-open-classes", "4", "--seed", str(s))[0] for s in seeds]
    naive = [train_run(f"open-mlp-{s}", "--num-open-classes", "4", "--seed", str(s), "--head", "mlp")[0] for s in seeds]
    lines = [
        "### Retrieval quality (closed and open set)",
        "",
        f"{machine_line()}  ",
        f"Command: `python -m bench.bench_quality{' --quick' if quick else ''}`, "
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, data `../shared/data/dogs` (10 breeds, 5,500 photos). "
        "Each cell: trained (frozen backbone in brackets, same images, same pairs).",
        "",
        "| run | Recall@1 | Recall@5 | MAP@R | pair ROC-AUC | R@1 gain |",
        "|---|---:|---:|---:|---:|---:|",
        row("closed set: 20 % of every breed held out (anchored head)", closed["closed"]),
    ]
    for s, m in zip(seeds, opens, strict=True):
        lines.append(row(f"open set, seed {s}: 6 breeds trained, 4 unseen (anchored head)", m["open"]))
    for s, m in zip(seeds, naive, strict=True):
        lines.append(row(f"open set, seed {s}: naive `--head mlp`", m["open"]))
    lines += [
        "",
        f"Default training on all 10 breeds: {closed_seconds:.0f} s wall "
        f"({'features computed in this run' if first_cache else 'features from the cache'}; "
        f"{closed['train_seconds']:.0f} s of epochs and validation). Calibrated threshold "
        f"{closed['threshold']:.3f}; accuracy at it on held-out pairs {closed['closed']['accuracy']:.3f}.",
    ]
    if not quick:
        seed, seed_seconds = train_run(
            "seed-cnn",
            "--backbone",
            "seed-cnn",
            "--mode",
            "finetune",
            "--image-size",
            "128",
            "--max-steps",
            str(SEED_CNN_STEPS),
            "--m-per-class",
            "4",
        )
        closed_seed = seed["closed"]
        lines.append(
            f"`seed-cnn` from scratch (fine-tuning mode, 128 px, {SEED_CNN_STEPS} steps of 40 images: "
            f"{seed_seconds:.0f} s on this CPU, about the default run's budget): closed-set Recall@1 "
            f"{closed_seed['recall_at_1']:.3f}, MAP@R {closed_seed['map_at_r']:.3f}, "
            f"pair ROC-AUC {closed_seed['roc_auc']:.3f}."
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    print(run(parser.parse_args().quick))


if __name__ == "__main__":
    main()
