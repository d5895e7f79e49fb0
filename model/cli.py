"""``imgsim data``, ``train``, ``eval``, ``compare``: thin wrappers over model/'s library functions."""

from __future__ import annotations

import argparse
import json
from typing import Any


def register(subparsers: Any) -> None:
    from model.training.train import get_args_parser

    data = subparsers.add_parser("data", help="download a dataset")
    data_sub = data.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    dogs = data_sub.add_parser("stanford-dogs", help="Stanford Dogs (120 breeds) with its official splits")
    dogs.add_argument("dir", help="where to put it; DIR/train and DIR/test become folder-per-class galleries")
    dogs.set_defaults(func=_data)

    train = subparsers.add_parser(
        "train",
        parents=[get_args_parser(add_help=False)],
        help="train the Siamese embedder with the contrastive loss",
    )
    train.set_defaults(func=_train)

    ev = subparsers.add_parser("eval", help="retrieval and verification metrics beside the frozen backbone")
    ev.add_argument("--checkpoint", required=True)
    ev.add_argument("--data", required=True, help="folder-per-class gallery to evaluate on")
    ev.add_argument("--out", default=None, help="folder for the plots (default: beside the checkpoint)")
    ev.add_argument("--json", action="store_true", help="print one JSON object")
    ev.add_argument("--device", default="auto")
    ev.add_argument("--workers", type=int, default=2)
    ev.set_defaults(func=_eval)

    cmp = subparsers.add_parser("compare", help="dissimilarity of two photos and the same/different verdict")
    cmp.add_argument("image1")
    cmp.add_argument("image2")
    cmp.add_argument("--checkpoint", required=True)
    cmp.add_argument("--device", default="auto")
    cmp.add_argument("--json", action="store_true")
    cmp.set_defaults(func=_compare)


def _data(args: argparse.Namespace) -> int:
    from model.data.stanford_dogs import download_stanford_dogs

    train_dir = download_stanford_dogs(args.dir)
    print(f"Stanford Dogs is ready: train on {train_dir}, evaluate on {train_dir.parent / 'test'}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from model.training.train import train

    metrics = train(args)
    if metrics:
        print(json.dumps({k: v for k, v in metrics.items() if k != "versions"}, indent=2))
        print(f"checkpoint: {args.out}/best.pt  loss curve: {args.out}/loss.png")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from model.evaluation.report import evaluate_checkpoint, format_report

    report = evaluate_checkpoint(
        args.checkpoint,
        args.data,
        out=args.out,
        device=args.device,
        workers=args.workers,
        progress=not args.json,
    )
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def _compare(args: argparse.Namespace) -> int:
    from model.core.images import ImageError
    from model.evaluation.report import compare_images

    try:
        result = compare_images(args.image1, args.image2, args.checkpoint, device=args.device)
    except ImageError as exc:
        raise ValueError(f"{exc.code}: {exc.detail}") from exc
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        verdict = "same" if result.same else "different"
        print(f"Dissimilarity: {result.dissimilarity:.3f}  (threshold {result.threshold:.3f})  -> {verdict}")
    return 0
