"""``imgsim train``: contrastive training of the Siamese encoder (shaped like torchvision's references).

Two modes share one loop:
- ``frozen`` (default): the pretrained backbone is frozen, its features are computed once (and cached on
  disk), and only the embedding head trains: seconds per epoch on a CPU.
- ``finetune``: the whole network trains on augmented images, the backbone at a lower learning rate.

``torchrun --nproc_per_node N -m model.training.train ...`` runs the same command with DDP (NCCL on CUDA, gloo on CPU).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from model.core.checkpoint import Checkpoint, library_versions, load_checkpoint, save_checkpoint
from model.core.device import resolve_device
from model.core.network import ModelConfig, SiameseNetwork
from model.core.presets import TrainPreset
from model.data.datasets import ImageItems
from model.data.galleries import Gallery, make_splits, scan_gallery
from model.data.sampling import ClassBalancedBatchSampler
from model.evaluation.evaluate import EvalSet, evaluate_sets
from model.evaluation.plots import plot_loss
from model.training.args import check_args, get_args_parser
from model.training.loop import PairBatches, StepContext, train_one_epoch, validation_loss
from model.training.losses import build_loss
from model.training.setup import _distributed, _optimizer, _prepare_head, _train_args, _validation_sets

log = logging.getLogger(__name__)


def train(args: argparse.Namespace) -> dict[str, Any]:
    """Train, validate each epoch, keep the best, calibrate the threshold, evaluate; returns metrics."""
    check_args(args)
    rank, world = _distributed()
    device = resolve_device(args.device)
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    gallery = scan_gallery(args.data)
    open_classes = [c.strip() for c in args.open_classes.split(",") if c.strip()]
    splits = make_splits(
        gallery.items,
        seed=args.seed,
        val_fraction=args.val_fraction,
        open_classes=open_classes,
        num_open_classes=args.num_open_classes,
    )
    class_names = splits.train_classes
    class_to_idx = {c: i for i, c in enumerate(class_names)}
    config = ModelConfig(
        backbone=args.backbone,
        embedding_dim=args.embedding_dim,
        head=args.head,
        hidden_dim=args.hidden_dim,
        learned_weight=args.learned_weight,
        learned_dim=args.learned_dim,
        # Class probabilities from an untrained classifier would be noise: only a pretrained one anchors.
        class_weight=args.class_weight if not args.no_pretrained else 0.0,
        image_size=args.image_size,
        pretrained=not args.no_pretrained and args.backbone != "seed-cnn",
    )
    model = SiameseNetwork(config).to(device)
    pretrained_features = config.pretrained

    # Inputs of the loop: cached features (frozen) or images (finetune).
    cache_dir = Path(args.cache_dir) if args.cache_dir else out / "cache"
    progress = not args.no_progress and rank == 0
    train_inputs = _prepare_head(model, args, gallery.root, splits.train, cache_dir, device, rank, world, progress)
    train_labels = [i.label for i in splits.train]
    batches = PairBatches.create(args, train_labels, rank=rank, world_size=world)
    steps_per_epoch = args.steps_per_epoch or len(batches)
    total_steps = args.max_steps or steps_per_epoch * args.epochs
    epochs = math.ceil(total_steps / steps_per_epoch)

    optimizer, scheduler = _optimizer(model, args, total_steps)
    history: dict[str, list[Any]]
    start_epoch, step, history = 0, 0, {"steps": [], "train_loss": [], "val_loss": [], "val_score": []}
    best_score, stale = -math.inf, 0
    if args.resume:
        last = load_checkpoint(out / "last.pt", map_location=device)
        model.load_state_dict(last.model.state_dict())
        optimizer.load_state_dict(last.extra["optimizer"])
        scheduler.load_state_dict(last.extra["scheduler"])
        start_epoch, step = int(last.extra["epoch"]) + 1, int(last.extra["step"])
        history, best_score = last.extra["history"], float(last.extra["best_score"])
        log.info("resumed from %s at epoch %d, step %d", out / "last.pt", start_epoch, step)

    train_module: torch.nn.Module = model.head if args.mode == "frozen" else model
    if world > 1:
        train_module = DistributedDataParallel(
            train_module, device_ids=[device.index] if device.type == "cuda" else None
        )
    teacher = None
    if args.mode == "finetune" and args.distill > 0 and pretrained_features:
        teacher = SiameseNetwork(config).backbone.to(device).eval().requires_grad_(False)
    image_loader = None
    if args.mode == "finetune":
        dataset = ImageItems(gallery.root, splits.train, TrainPreset(config.image_size), class_to_idx)
        image_loader = (
            DataLoader(
                dataset,
                batch_sampler=batches.sampler,
                num_workers=args.workers,
                pin_memory=device.type == "cuda",
                persistent_workers=args.workers > 0,
            )
            if isinstance(batches.sampler, ClassBalancedBatchSampler)
            else None
        )
        batches.dataset = dataset
    ctx = StepContext(
        module=train_module,
        frozen=args.mode == "frozen",
        loss_fn=build_loss(args.loss, args.margin),
        optimizer=optimizer,
        scheduler=scheduler,
        device=device,
        amp=device.type == "cuda" and not args.no_amp,
        distill=args.distill if pretrained_features else 0.0,
        teacher=teacher,
        class_to_idx=class_to_idx,
    )
    val_sets = _validation_sets(gallery, splits)
    started = time.time()
    for epoch in range(start_epoch, epochs):
        batches.set_epoch(epoch)
        step, losses = train_one_epoch(
            ctx,
            batches,
            train_inputs,
            image_loader,
            step,
            steps_per_epoch,
            total_steps,
            progress=progress,
            desc=f"epoch {epoch + 1}/{epochs}",
        )
        history["steps"] += list(range(step - len(losses) + 1, step + 1))
        history["train_loss"] += losses
        stop = False
        if rank == 0:
            val = evaluate_sets(
                model,
                gallery.root,
                val_sets,
                device=device,
                cache_dir=cache_dir,
                frozen=args.mode == "frozen",
                workers=args.workers,
                progress=progress,
            )
            score = selection_score(val.retrieval, step)
            vloss = validation_loss(model.head, val, ctx.loss_fn)
            history["val_loss"].append([step, vloss])
            history["val_score"].append([step, score])
            log.info(
                "epoch %d step %d train loss %.4f val loss %.4f val MAP@R %.4f",
                epoch + 1,
                step,
                float(np.mean(losses)) if losses else float("nan"),
                vloss,
                score,
            )
            extra = {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "epoch": epoch,
                "step": step,
                "history": history,
                "best_score": max(best_score, score),
            }
            record = Checkpoint(
                model,
                class_names=class_names,
                splits=splits.to_dict(),
                train_args=_train_args(args, gallery),
                extra=extra,
            )
            save_checkpoint(record, out / "last.pt")
            if score > best_score:
                best_score, stale = score, 0
                save_checkpoint(
                    Checkpoint(
                        model,
                        class_names=class_names,
                        splits=splits.to_dict(),
                        train_args=_train_args(args, gallery),
                    ),
                    out / "best.pt",
                )
            else:
                stale += 1
            plot_loss(
                history["steps"],
                history["train_loss"],
                [tuple(v) for v in history["val_loss"]],
                out / "loss.png",
            )
            stop = stale >= args.patience or step >= total_steps
        if world > 1:
            flag = [stop]
            dist.broadcast_object_list(flag, src=0)
            stop = bool(flag[0])
        if stop:
            break
    metrics: dict[str, Any] = {}
    if rank == 0:
        metrics = finish(out, gallery, val_sets, device, cache_dir, args, time.time() - started)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return metrics


def selection_score(retrieval: dict[str, dict[str, float]], step: int) -> float:
    """What picks the best epoch: MAP@R on held-out images of the training classes. Open-set classes are
    only ever measured, never used to choose, so the open-set numbers stay honest."""
    if "closed" in retrieval:
        return retrieval["closed"]["map_at_r"]
    return -float(step)  # nothing held out: the last epoch is the best


def finish(
    out: Path,
    gallery: Gallery,
    val_sets: list[EvalSet],
    device: torch.device,
    cache_dir: Path,
    args: argparse.Namespace,
    seconds: float,
) -> dict[str, Any]:
    """Reload the best checkpoint, calibrate its threshold on validation pairs, measure it, save it again."""
    best = load_checkpoint(out / "best.pt", map_location=device)
    result = evaluate_sets(
        best.model,
        gallery.root,
        val_sets,
        device=device,
        cache_dir=cache_dir,
        frozen=args.mode == "frozen",
        workers=args.workers,
        progress=not args.no_progress,
        with_baseline=True,
    )
    best.threshold = result.threshold
    metrics = {**result.summary(), "train_seconds": round(seconds, 1), "versions": library_versions()}
    best.metrics = metrics
    save_checkpoint(best, out / "best.pt")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    log.info("best checkpoint %s (hash %s…), threshold %.3f", out / "best.pt", best.hash[:12], best.threshold)
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = get_args_parser().parse_args(argv)
    metrics = train(args)
    if metrics:
        print(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
