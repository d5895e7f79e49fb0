"""The options of ``imgsim train``, and their checks (invalid options fail loudly, before any work)."""

from __future__ import annotations

import argparse
from pathlib import Path

from model.core.backbones import BACKBONES, INPUT_NORMS
from model.core.network import HEADS
from model.data.sampling import SAMPLERS
from model.training.losses import LOSSES

MODES = ("frozen", "finetune")


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Train the Siamese embedder with a metric-learning loss (by default the article's contrastive).",
        add_help=add_help,
    )
    # --data and --run-dir are required here; `imgsim train` fills them from IMGSIM_DATA_DIR / IMGSIM_RUN_DIR.
    p.add_argument("--data", "--gallery", help="folder-per-class photos to train on (--gallery: old spelling)")
    p.add_argument(
        "--run-dir",
        "--out",
        dest="out",
        help="run folder: best.pt, last.pt, loss.png, metrics.json (--out: old spelling)",
    )
    p.add_argument("--backbone", default="efficientnet-lite0", help=", ".join(BACKBONES))
    p.add_argument("--embedding-dim", type=int, default=256, help="length of the embedding (%(default)s)")
    p.add_argument("--head", default="anchored", choices=HEADS, help="embedding head (%(default)s)")
    p.add_argument("--loss", default="contrastive", choices=LOSSES, help="contrastive (the article's) or triplet")
    p.add_argument("--hidden-dim", type=int, default=1024, help="hidden width of the head's MLP (%(default)s)")
    p.add_argument(
        "--learned-weight",
        type=float,
        default=0.3,
        help="anchored head: share of the similarity given to the learnt half (0 = frozen backbone only)",
    )
    p.add_argument("--learned-dim", type=int, default=None, help="anchored head: dims of the learnt half (dim/8)")
    p.add_argument(
        "--class-weight",
        type=float,
        default=0.5,
        help="anchored head: share of the frozen anchor given to the backbone's ImageNet class probabilities",
    )
    p.add_argument(
        "--image-size", type=int, default=0, help="0: the backbone's native size (lite0 224, lite1 240, lite2 260)"
    )
    p.add_argument(
        "--input-norm",
        default="native",
        choices=INPUT_NORMS,
        help="native: the input scaling the backbone's weights were trained with ([-1, 1] for EfficientNet-Lite); "
        "imagenet: ImageNet mean/std for every backbone (checkpoints before this option)",
    )
    p.add_argument("--no-pretrained", action="store_true", help="random backbone weights (seed-cnn always is)")
    p.add_argument(
        "--mode",
        default="frozen",
        choices=MODES,
        help="frozen: train the head on cached backbone features; finetune: all",
    )
    p.add_argument("--sampler", default="class-balanced", choices=SAMPLERS, help="how batches are drawn (%(default)s)")
    p.add_argument("--m-per-class", type=int, default=8, help="class-balanced: images of each class per batch")
    p.add_argument("--classes-per-batch", type=int, default=16, help="class-balanced: classes per batch")
    p.add_argument("--pairs-per-class", type=int, default=200, help="article: similar and dissimilar pairs per class")
    p.add_argument("--batch-size", type=int, default=64, help="article: pairs per batch")
    p.add_argument(
        "--margin",
        type=float,
        default=None,
        help="the loss's margin on unit-length embeddings (default: contrastive 1.0, triplet 0.2)",
    )
    p.add_argument(
        "--distill",
        type=float,
        default=0.0,
        help="weight of a term keeping the batch's similarities close to the frozen backbone's (for the residual "
        "and mlp heads; the anchored head keeps the backbone's geometry by construction)",
    )
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate (%(default)s)")
    p.add_argument("--backbone-lr-scale", type=float, default=0.1, help="finetune: backbone lr = lr × this")
    p.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay (%(default)s)")
    p.add_argument("--warmup", type=float, default=0.1, help="fraction of steps with a linear warm-up")
    p.add_argument("--epochs", type=int, default=4, help="at most this many epochs (%(default)s)")
    p.add_argument("--steps-per-epoch", type=int, default=None, help="default: one pass over the training images")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (smoke tests)")
    p.add_argument("--patience", type=int, default=3, help="epochs without validation gain before stopping")
    p.add_argument("--val-fraction", type=float, default=0.2, help="closed set: share of each class held out")
    p.add_argument(
        "--exclude",
        default=None,
        metavar="GLOB|FILE",
        help="photos never used to train, select or calibrate (e.g. the clean queries of `imgsim eval --queries`): "
        "a glob on paths under --data ('*/ILSVRC2012_val_*') or a file listing them",
    )
    p.add_argument("--open-classes", default="", help="comma-separated classes held out whole (open set)")
    p.add_argument("--num-open-classes", type=int, default=0, help="or: this many classes drawn with --seed")
    p.add_argument("--seed", type=int, default=0, help="seed of the splits, sampling and initialisation")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--no-amp", action="store_true", help="disable bf16 autocast on CUDA")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers decoding images")
    p.add_argument("--cache-dir", default=None, help="where frozen-mode features are cached (default RUN_DIR/cache)")
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/last.pt")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def check_args(args: argparse.Namespace) -> None:
    if not args.data or not args.out:
        missing = "--data" if not args.data else "--run-dir"
        raise ValueError(f"{missing} is required: the folder-per-class photos (--data) and the run folder (--run-dir).")
    if not Path(args.data).is_dir():
        raise FileNotFoundError(f"{args.data}: no such folder (--data: one subfolder of images per class).")
    args.device = args.device or "auto"
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
    if not 0.0 <= args.learned_weight <= 1.0:
        raise ValueError(f"--learned-weight must be in [0, 1], got {args.learned_weight}.")
    if args.margin is not None and args.margin <= 0:
        raise ValueError(f"--margin must be positive, got {args.margin}.")
    if LOSSES[args.loss].takes == "triplets" and args.sampler == "article":
        raise ValueError(
            f"--loss {args.loss} needs triplets, and the article's pairs share no anchor: use --sampler class-balanced."
        )
    if args.lr <= 0:
        raise ValueError(f"--lr must be positive, got {args.lr}.")
