"""Training setup, everything before the first step: the process group, data and splits, the model and its
head's initialisation (frozen mode: the cached features), the batches, the optimizer, a resumed run's state,
and the validation sets. :func:`setup` returns them as one :class:`TrainingRun`."""

from __future__ import annotations

import argparse
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from model.core.checkpoint import load_checkpoint
from model.core.device import resolve_device
from model.core.network import ModelConfig, SiameseNetwork
from model.core.presets import TrainPreset
from model.data.datasets import ImageItems
from model.data.galleries import Gallery, Item, Splits, gallery_fingerprint, make_splits, scan_gallery, select_items
from model.data.sampling import ClassBalancedBatchSampler
from model.evaluation.evaluate import EvalSet
from model.inference.features import cached_features
from model.training.loop import PairBatches, StepContext, warmup_cosine
from model.training.losses import build_loss

log = logging.getLogger(__name__)


def _new_history() -> dict[str, list[Any]]:
    return {"steps": [], "train_loss": [], "val_loss": [], "val_score": []}


@dataclass
class TrainingRun:
    """What the epoch loop and ``finish`` work with; the last four fields are the progress so far."""

    args: argparse.Namespace
    out: Path
    rank: int
    world: int
    device: torch.device
    gallery: Gallery
    splits: Splits
    model: SiameseNetwork
    ctx: StepContext  # the module that trains, the loss, the optimizer and scheduler
    batches: PairBatches
    train_inputs: torch.Tensor | None  # frozen mode: the cached backbone features
    image_loader: DataLoader | None  # fine-tuning with class-balanced batches
    val_sets: list[EvalSet]
    cache_dir: Path
    progress: bool
    steps_per_epoch: int
    total_steps: int
    epochs: int
    train_args: dict[str, Any]  # the options as checkpoints record them
    start_epoch: int = 0
    step: int = 0
    history: dict[str, list[Any]] = field(default_factory=_new_history)
    best_score: float = -math.inf


def setup(args: argparse.Namespace) -> TrainingRun:
    """Build everything in the order the random draws were always made in, so a seed gives the same run."""
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
        _training_items(gallery, args.exclude),
        seed=args.seed,
        val_fraction=args.val_fraction,
        open_classes=open_classes,
        num_open_classes=args.num_open_classes,
    )
    config = _model_config(args)
    model = SiameseNetwork(config).to(device)

    # Inputs of the loop: cached features (frozen) or images (finetune).
    cache_dir = Path(args.cache_dir) if args.cache_dir else out / "cache"
    progress = not args.no_progress and rank == 0
    train_inputs = _prepare_head(model, args, gallery.root, splits.train, cache_dir, device, rank, world, progress)
    batches = PairBatches.create(args, [i.label for i in splits.train], rank=rank, world_size=world)
    steps_per_epoch = args.steps_per_epoch or len(batches)
    total_steps = args.max_steps or steps_per_epoch * args.epochs
    optimizer, scheduler = _optimizer(model, args, total_steps)
    run = TrainingRun(
        args=args,
        out=out,
        rank=rank,
        world=world,
        device=device,
        gallery=gallery,
        splits=splits,
        model=model,
        ctx=_step_context(args, model, optimizer, scheduler, splits, device),
        batches=batches,
        train_inputs=train_inputs,
        image_loader=None,
        val_sets=_validation_sets(gallery, splits),
        cache_dir=cache_dir,
        progress=progress,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        epochs=math.ceil(total_steps / steps_per_epoch),
        train_args=_train_args(args, gallery),
    )
    if args.resume:
        _resume(run)
    run.ctx.module = _distributed_module(run.ctx.module, device, world)
    if args.mode == "finetune":
        run.ctx.teacher = _teacher(args, model.config, device)
        run.image_loader = _image_loader(run)
    return run


def _training_items(gallery: Gallery, exclude: str | None) -> list[Item]:
    """The gallery's photos less those ``--exclude`` names: they stay out of every split."""
    if not exclude:
        return gallery.items
    excluded = set(select_items(gallery, exclude))
    log.info("--exclude %s: %d of %d photos kept out of training", exclude, len(excluded), len(gallery.items))
    return [item for k, item in enumerate(gallery.items) if k not in excluded]


def _model_config(args: argparse.Namespace) -> ModelConfig:
    return ModelConfig(
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
        input_norm=args.input_norm,
    )


def _step_context(
    args: argparse.Namespace,
    model: SiameseNetwork,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    splits: Splits,
    device: torch.device,
) -> StepContext:
    """The loop's context; its module is wrapped in DDP later, after a resumed run's weights are loaded."""
    pretrained = model.config.pretrained
    return StepContext(
        module=model.head if args.mode == "frozen" else model,
        frozen=args.mode == "frozen",
        loss_fn=build_loss(args.loss, args.margin),
        optimizer=optimizer,
        scheduler=scheduler,
        device=device,
        amp=device.type == "cuda" and not args.no_amp,
        distill=args.distill if pretrained else 0.0,
        teacher=None,
        class_to_idx={c: i for i, c in enumerate(splits.train_classes)},
    )


def _resume(run: TrainingRun) -> None:
    """Continue from ``last.pt``: weights, optimizer and scheduler state, the step count and the history."""
    path = run.out / "last.pt"
    last = load_checkpoint(path, map_location=run.device)
    run.model.load_state_dict(last.model.state_dict())
    run.ctx.optimizer.load_state_dict(last.extra["optimizer"])
    run.ctx.scheduler.load_state_dict(last.extra["scheduler"])
    run.start_epoch, run.step = int(last.extra["epoch"]) + 1, int(last.extra["step"])
    run.history, run.best_score = last.extra["history"], float(last.extra["best_score"])
    log.info("resumed from %s at epoch %d, step %d", path, run.start_epoch, run.step)


def _distributed_module(module: torch.nn.Module, device: torch.device, world: int) -> torch.nn.Module:
    if world == 1:
        return module
    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


def _teacher(args: argparse.Namespace, config: ModelConfig, device: torch.device) -> torch.nn.Module | None:
    """Fine-tuning with ``--distill``: a frozen copy of the pretrained backbone for the structure term."""
    if args.distill > 0 and config.pretrained:
        return SiameseNetwork(config).backbone.to(device).eval().requires_grad_(False)
    return None


def _image_loader(run: TrainingRun) -> DataLoader | None:
    """Fine-tuning: the augmented images (a DataLoader for class-balanced batches; the article's pair lists
    read the dataset directly)."""
    args, config = run.args, run.model.config
    dataset = ImageItems(run.gallery.root, run.splits.train, TrainPreset(config.image_size), run.ctx.class_to_idx)
    run.batches.dataset = dataset
    if not isinstance(run.batches.sampler, ClassBalancedBatchSampler):
        return None
    return DataLoader(
        dataset,
        batch_sampler=run.batches.sampler,
        num_workers=args.workers,
        pin_memory=run.device.type == "cuda",
        persistent_workers=args.workers > 0,
    )


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
    return optimizer, warmup_cosine(optimizer, args.warmup, total_steps)


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
