"""``imgsim train``: metric-learning training of the Siamese encoder (shaped like torchvision's references).

Two modes share one loop:
- ``frozen`` (default): the pretrained backbone is frozen, its features are computed once (and cached on
  disk), and only the embedding head trains: seconds per epoch on a CPU.
- ``finetune``: the whole network trains on augmented images, the backbone at a lower learning rate.

``train`` is :func:`~model.training.setup.setup`, then :func:`run_epochs` (train, validate, keep the best, stop
early), then :func:`finish` (calibrate the same/different verdict of the best checkpoint and measure it).
``torchrun --nproc_per_node N -m model.training.train ...`` runs the same command with DDP (NCCL on CUDA, gloo on CPU).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from model.core.checkpoint import Checkpoint, library_versions, load_checkpoint, save_checkpoint
from model.evaluation.evaluate import EvalResult, evaluate_sets
from model.evaluation.plots import plot_loss
from model.training.args import check_args, get_args_parser
from model.training.calibrate import Verdict, calibrate_verdict
from model.training.loop import train_one_epoch, validation_loss
from model.training.setup import TrainingRun, setup

log = logging.getLogger(__name__)

__all__ = ["finish", "get_args_parser", "main", "run_epochs", "train"]


def train(args: argparse.Namespace) -> dict[str, Any]:
    """Train, validate each epoch, keep the best, calibrate the threshold, evaluate; returns metrics."""
    check_args(args)
    run = setup(args)
    started = time.time()
    run_epochs(run)
    metrics: dict[str, Any] = {}
    if run.rank == 0:
        metrics = finish(run, time.time() - started)
    if run.world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return metrics


def run_epochs(run: TrainingRun) -> None:
    """Epochs until the step budget is spent or validation stops improving (``--patience``)."""
    stale = 0
    for epoch in range(run.start_epoch, run.epochs):
        run.batches.set_epoch(epoch)
        run.step, losses = train_one_epoch(
            run.ctx,
            run.batches,
            run.train_inputs,
            run.image_loader,
            run.step,
            run.steps_per_epoch,
            run.total_steps,
            progress=run.progress,
            desc=f"epoch {epoch + 1}/{run.epochs}",
        )
        run.history["steps"] += list(range(run.step - len(losses) + 1, run.step + 1))
        run.history["train_loss"] += losses
        stop = False
        if run.rank == 0:
            improved = end_of_epoch(run, epoch, losses)
            stale = 0 if improved else stale + 1
            stop = stale >= run.args.patience or run.step >= run.total_steps
        if run.world > 1:
            flag = [stop]
            dist.broadcast_object_list(flag, src=0)
            stop = bool(flag[0])
        if stop:
            break


def end_of_epoch(run: TrainingRun, epoch: int, losses: list[float]) -> bool:
    """Rank 0: validate, log, save ``last.pt`` (and ``best.pt`` when the score improved), plot the losses.
    Returns whether the score improved."""
    args, history = run.args, run.history
    val = evaluate_sets(
        run.model,
        run.gallery.root,
        run.val_sets,
        device=run.device,
        cache_dir=run.cache_dir,
        frozen=args.mode == "frozen",
        workers=args.workers,
        progress=run.progress,
    )
    score = selection_score(val.retrieval, run.step)
    vloss = validation_loss(run.model.head, val, run.ctx.loss_fn)
    history["val_loss"].append([run.step, vloss])
    history["val_score"].append([run.step, score])
    log.info(
        "epoch %d step %d train loss %.4f val loss %.4f val MAP@R %.4f",
        epoch + 1,
        run.step,
        float(np.mean(losses)) if losses else float("nan"),
        vloss,
        score,
    )
    resume_state = {
        "optimizer": run.ctx.optimizer.state_dict(),
        "scheduler": run.ctx.scheduler.state_dict(),
        "epoch": epoch,
        "step": run.step,
        "history": history,
        "best_score": max(run.best_score, score),
    }
    save_run_checkpoint(run, run.out / "last.pt", resume_state)
    improved = score > run.best_score
    if improved:
        run.best_score = score
        save_run_checkpoint(run, run.out / "best.pt")
    plot_loss(history["steps"], history["train_loss"], [tuple(v) for v in history["val_loss"]], run.out / "loss.png")
    return improved


def save_run_checkpoint(run: TrainingRun, path: Path, resume_state: dict[str, Any] | None = None) -> None:
    """The model as a self-describing checkpoint with the run's classes, splits and options; ``last.pt`` also
    carries what ``--resume`` needs."""
    record = Checkpoint(
        run.model,
        class_names=run.splits.train_classes,
        splits=run.splits.to_dict(),
        train_args=run.train_args,
        extra=resume_state or {},
    )
    save_checkpoint(record, path)


def selection_score(retrieval: dict[str, dict[str, float]], step: int) -> float:
    """What picks the best epoch: MAP@R on held-out images of the training classes. Open-set classes are
    only ever measured, never used to choose, so the open-set numbers stay honest."""
    if "closed" in retrieval:
        return retrieval["closed"]["map_at_r"]
    return -float(step)  # nothing held out: the last epoch is the best


def finish(run: TrainingRun, seconds: float) -> dict[str, Any]:
    """Reload the best checkpoint, calibrate its verdict (:mod:`model.training.calibrate`), measure it, save it
    again."""
    out = run.out
    best = load_checkpoint(out / "best.pt", map_location=run.device)
    result = evaluate_sets(
        best.model,
        run.gallery.root,
        run.val_sets,
        device=run.device,
        cache_dir=run.cache_dir,
        frozen=run.args.mode == "frozen",
        workers=run.args.workers,
        progress=not run.args.no_progress,
        with_baseline=True,
    )
    verdict = _calibrate(run, best, result)
    best.threshold, best.platt, best.calibration = verdict.threshold, verdict.platt, verdict.record
    result.set_verdict(verdict.threshold, verdict.platt)
    metrics = {
        **result.summary(),
        "calibration": verdict.record,
        "train_seconds": round(seconds, 1),
        "versions": library_versions(),
    }
    best.metrics = metrics
    save_checkpoint(best, out / "best.pt")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    log.info("best checkpoint %s (hash %s…), threshold %.3f", out / "best.pt", best.hash[:12], best.threshold)
    return metrics


def _calibrate(run: TrainingRun, best: Checkpoint, result: EvalResult) -> Verdict:
    """The verdict calibrated on classes held out from training, from the features of the training classes'
    photos (training and held-out ones: the closed set's, else the training inputs)."""
    features: torch.Tensor | None = result.features.get("closed", run.train_inputs)
    items = run.splits.train + run.splits.val if "closed" in result.features else run.splits.train
    is_val = np.arange(len(items)) >= len(run.splits.train)
    labels = [i.label for i in items]
    return calibrate_verdict(best.model, run.args, result, features, labels, is_val, run.device)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = get_args_parser().parse_args(argv)
    metrics = train(args)
    if metrics:
        print(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
