"""``imgsim train``: contrastive training of the Siamese encoder (shaped like torchvision's references).

Two modes share one loop:
- ``frozen`` (default): the pretrained backbone is frozen, its features are computed once (and cached on
  disk), and only the embedding head trains: seconds per epoch on a CPU.
- ``finetune``: the whole network trains on augmented images, the backbone at a lower learning rate.

``torchrun --nproc_per_node N -m model.train ...`` runs the same command with DDP (NCCL on CUDA, gloo on CPU).
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

from model.checkpoint import Checkpoint, library_versions, load_checkpoint, save_checkpoint
from model.data import Gallery, gallery_fingerprint, make_splits, scan_gallery
from model.datasets import ImageItems
from model.embedder import resolve_device
from model.evaluate import EvalSet, evaluate_sets
from model.features import cached_features
from model.losses import ContrastiveLoss
from model.network import HEADS, ModelConfig, SiameseNetwork
from model.plots import plot_loss
from model.presets import TrainPreset
from model.sampling import SAMPLERS, ClassBalancedBatchSampler
from model.steps import PairBatches, StepContext, train_one_epoch, validation_loss

log = logging.getLogger(__name__)
MODES = ("frozen", "finetune")


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Train the Siamese embedder with the contrastive loss.", add_help=add_help
    )
    p.add_argument("--data", required=True, help="folder-per-class gallery to train on")
    p.add_argument("--out", required=True, help="run directory: checkpoints, loss.png, metrics.json")
    p.add_argument(
        "--backbone", default="efficientnet-lite0", help="efficientnet-lite0, resnet18, resnet50, seed-cnn"
    )
    p.add_argument("--embedding-dim", type=int, default=256)
    p.add_argument("--head", default="residual", choices=HEADS)
    p.add_argument("--hidden-dim", type=int, default=1024)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument(
        "--no-pretrained", action="store_true", help="random backbone weights (seed-cnn always is)"
    )
    p.add_argument("--mode", default="frozen", choices=MODES)
    p.add_argument("--sampler", default="class-balanced", choices=SAMPLERS)
    p.add_argument(
        "--m-per-class", type=int, default=8, help="class-balanced: images of each class per batch"
    )
    p.add_argument("--classes-per-batch", type=int, default=16, help="class-balanced: classes per batch")
    p.add_argument(
        "--pairs-per-class", type=int, default=200, help="article: similar and dissimilar pairs per class"
    )
    p.add_argument("--batch-size", type=int, default=64, help="article: pairs per batch")
    p.add_argument(
        "--margin", type=float, default=1.0, help="contrastive margin m (embeddings are unit length)"
    )
    p.add_argument(
        "--distill",
        type=float,
        default=1.0,
        help="weight of the term keeping the batch's similarities close to the frozen backbone's",
    )
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--backbone-lr-scale", type=float, default=0.1, help="finetune: backbone lr = lr × this")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--warmup", type=float, default=0.1, help="fraction of steps with a linear warm-up")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--steps-per-epoch", type=int, default=None)
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (smoke tests)")
    p.add_argument("--patience", type=int, default=3, help="epochs without validation gain before stopping")
    p.add_argument("--val-fraction", type=float, default=0.2, help="closed set: share of each class held out")
    p.add_argument("--open-classes", default="", help="comma-separated classes held out whole (open set)")
    p.add_argument("--num-open-classes", type=int, default=0, help="or: this many classes drawn with --seed")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--no-amp", action="store_true", help="disable bf16 autocast on CUDA")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers decoding images")
    p.add_argument(
        "--cache-dir", default=None, help="where frozen-mode features are cached (default RUN_DIR/cache)"
    )
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/last.pt")
    p.add_argument("--no-progress", action="store_true")
    return p


def check_args(args: argparse.Namespace) -> None:
    if args.mode == "frozen" and args.backbone == "seed-cnn":
        raise ValueError(
            "--mode frozen needs a pretrained backbone; seed-cnn trains from scratch: use --mode finetune."
        )
    for name in (
        "epochs",
        "m_per_class",
        "classes_per_batch",
        "pairs_per_class",
        "batch_size",
        "embedding_dim",
    ):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}.")
    if args.max_steps is not None and args.max_steps < 1:
        raise ValueError(f"--max-steps must be at least 1, got {args.max_steps}.")
    if args.lr <= 0:
        raise ValueError(f"--lr must be positive, got {args.lr}.")


def _distributed() -> tuple[int, int]:
    """(rank, world size); initialises the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


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
        image_size=args.image_size,
        pretrained=not args.no_pretrained and args.backbone != "seed-cnn",
    )
    model = SiameseNetwork(config).to(device)
    pretrained_features = config.pretrained

    # Inputs of the loop: cached features (frozen) or images (finetune).
    cache_dir = Path(args.cache_dir) if args.cache_dir else out / "cache"
    progress = not args.no_progress and rank == 0
    feature_kw = dict(
        image_size=config.image_size, num_workers=args.workers, device=device, progress=progress
    )
    if args.mode == "frozen":
        model.backbone.requires_grad_(False)
        if rank != 0:
            dist.barrier()  # rank 0 computes and caches the features; the others then read the cache
        train_inputs = cached_features(
            model.backbone,
            config.backbone,
            gallery.root,
            splits.train,
            cache_dir,
            desc="features (train)",
            **feature_kw,
        )
        if rank == 0 and world > 1:
            dist.barrier()
        if not args.resume:
            model.head.fit_pca(train_inputs.to(device))
    else:
        train_inputs = None
        if config.pretrained and not args.resume:
            with torch.inference_mode():
                sample = cached_features(
                    model.backbone,
                    config.backbone,
                    gallery.root,
                    splits.train[::4],
                    cache_dir,
                    desc="features (PCA init)",
                    **feature_kw,
                )
            model.head.fit_pca(sample.to(device))

    train_labels = [i.label for i in splits.train]
    batches = PairBatches.create(args, train_labels, rank=rank, world_size=world)
    steps_per_epoch = args.steps_per_epoch or len(batches)
    total_steps = args.max_steps or steps_per_epoch * args.epochs
    epochs = math.ceil(total_steps / steps_per_epoch)

    head_params = list(model.head.parameters())
    groups: list[dict[str, Any]] = [{"params": head_params, "lr": args.lr}]
    if args.mode == "finetune":
        groups.append({"params": list(model.backbone.parameters()), "lr": args.lr * args.backbone_lr_scale})
    optimizer = torch.optim.AdamW(groups, weight_decay=args.weight_decay)
    warmup = max(1, int(total_steps * args.warmup))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (
            min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, total_steps) / total_steps))
        ),
    )
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
        loss_fn=ContrastiveLoss(args.margin),
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
            score = (
                float(np.mean([v["map_at_r"] for v in val.retrieval.values()]))
                if val.retrieval
                else -float(step)
            )
            vloss = validation_loss(val, ContrastiveLoss(args.margin))
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
