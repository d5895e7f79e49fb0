"""Training setup, before the first step: distributed start-up, the head's initialisation (and frozen-mode
features), the optimizer and the validation sets."""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from model.core.network import SiameseNetwork
from model.data.galleries import Gallery, gallery_fingerprint
from model.evaluation.evaluate import EvalSet
from model.inference.features import cached_features


def _distributed() -> tuple[int, int]:
    """(rank, world size); initialises the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def _prepare_head(
    model: SiameseNetwork,
    args: argparse.Namespace,
    root: Path,
    train_items: list[Any],
    cache_dir: Path,
    device: torch.device,
    rank: int,
    world: int,
    progress: bool,
) -> torch.Tensor | None:
    """Frozen mode: freeze the backbone and return the training features (cached). Both modes: start the
    head's frozen projection at the PCA of the pretrained features (unless resuming)."""
    config = model.config
    kw = dict(image_size=config.image_size, num_workers=args.workers, device=device, progress=progress)
    if args.mode == "frozen":
        model.backbone.requires_grad_(False)
        if rank != 0:
            dist.barrier()  # rank 0 computes and caches the features; the others then read the cache
        features = cached_features(
            model.backbone, config.backbone, root, train_items, cache_dir, desc="features (train)", **kw
        )
        if rank == 0 and world > 1:
            dist.barrier()
        if not args.resume:
            model.head.fit_pca(features.to(device))
        return features
    if config.pretrained and not args.resume:
        sample = cached_features(
            model.backbone, config.backbone, root, train_items[::4], cache_dir, desc="features (PCA init)", **kw
        )
        model.head.fit_pca(sample.to(device))
    return None


def _optimizer(
    model: SiameseNetwork, args: argparse.Namespace, total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW (the backbone at a lower rate when fine-tuning), linear warm-up then cosine decay."""
    head_params = [p for p in model.head.parameters() if p.requires_grad]
    groups: list[dict[str, Any]] = [{"params": head_params, "lr": args.lr}]
    if args.mode == "finetune":
        groups.append({"params": list(model.backbone.parameters()), "lr": args.lr * args.backbone_lr_scale})
    optimizer = torch.optim.AdamW(groups, weight_decay=args.weight_decay)
    warmup = max(1, int(total_steps * args.warmup))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, total_steps) / total_steps)),
    )
    return optimizer, scheduler


def _train_args(args: argparse.Namespace, gallery: Gallery) -> dict[str, Any]:
    """The options as plain values (the CLI adds a ``func``), plus what identifies the data."""
    plain = {k: v for k, v in vars(args).items() if isinstance(v, str | int | float | bool | type(None))}
    return {**plain, "data": str(Path(args.data).resolve()), "data_fingerprint": gallery_fingerprint(gallery)}


def _validation_sets(gallery: Gallery, splits: Any) -> list[EvalSet]:
    """Closed set: held-out images queried against all images of the training classes. Open set: unseen
    classes' images queried among themselves."""
    sets = []
    if splits.val:
        items = splits.train + splits.val
        sets.append(EvalSet("closed", items, queries=list(range(len(splits.train), len(items)))))
    if splits.val_open:
        sets.append(EvalSet("open", splits.val_open))
    return sets
