"""``imgsim data``, ``train``, ``eval``, ``compare``: thin wrappers over model/'s library functions.

The option vocabulary is the one of every ``imgsim`` command: ``--data`` photos, ``--checkpoint`` model,
``--run-dir`` training output, ``--device``, ``--json``; options left out are filled from the settings by
``app.cli`` (``set_defaults(from_settings=...)``), and input files are checked before anything loads.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

DEVICE_HELP = "auto, cpu, cuda or cuda:N (IMGSIM_DEVICE; default auto)"
CHECKPOINT_HELP = "trained checkpoint (IMGSIM_CHECKPOINT; default: the gallery's model, else runs/default/best.pt)"
JSON_HELP = "print the result as one JSON object"


def register(subparsers: Any) -> None:
    from model.training.train import get_args_parser

    data = subparsers.add_parser("data", help="download a dataset")
    data_sub = data.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    dogs = data_sub.add_parser("stanford-dogs", help="Stanford Dogs (120 breeds) with its official splits")
    dogs.add_argument(
        "dir",
        nargs="?",
        help="where to put it; DIR/train and DIR/test become folder-per-class galleries "
        "(IMGSIM_DOWNLOAD_DIR; default data/stanford-dogs)",
    )
    dogs.add_argument("--json", action="store_true", help=JSON_HELP)
    dogs.set_defaults(func=_data, from_settings={"dir": "download_dir"})

    train = subparsers.add_parser(
        "train",
        parents=[get_args_parser(add_help=False)],
        help="train the Siamese embedder with the contrastive loss",
        description="Train the Siamese embedder. --data defaults to IMGSIM_DATA_DIR (else ../shared/data/dogs), "
        "--run-dir to IMGSIM_RUN_DIR (else runs/default).",
    )
    train.add_argument("--json", action="store_true", help=JSON_HELP)
    train.set_defaults(func=_train, from_settings={"data": "photos", "out": "run_dir", "device": "device"})

    ev = subparsers.add_parser("eval", help="retrieval and verification metrics beside the frozen backbone")
    ev.add_argument("--checkpoint", help=CHECKPOINT_HELP)
    ev.add_argument("--data", "--gallery", required=True, help="folder-per-class photos to evaluate on")
    ev.add_argument(
        "--plots", "--out", dest="plots", help="folder for the plots (default: beside the checkpoint; --out: old)"
    )
    ev.add_argument(
        "--queries",
        default=None,
        metavar="GLOB|FILE",
        help="only these photos query (the whole gallery answers): a glob on paths under --data, e.g. "
        "'*/ILSVRC2012_val_*', or a file listing them; default: every photo, leave-one-out",
    )
    ev.add_argument("--json", action="store_true", help=JSON_HELP)
    ev.add_argument("--device", help=DEVICE_HELP)
    ev.add_argument("--workers", type=int, default=2, help="processes decoding images (%(default)s)")
    ev.set_defaults(
        func=_eval, from_settings={"checkpoint": "checkpoint", "device": "device"}, input_files=("data", "checkpoint")
    )

    cmp = subparsers.add_parser("compare", help="dissimilarity of two photos and the same/different verdict")
    cmp.add_argument("image1", help="a photo")
    cmp.add_argument("image2", help="another photo")
    cmp.add_argument("--checkpoint", help=CHECKPOINT_HELP)
    cmp.add_argument("--device", help=DEVICE_HELP)
    cmp.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "fp32", "int8", "fp16", "bf16"),
        help="as the service's IMGSIM_PRECISION; auto: int8 on the CPU where the model quantises well",
    )
    cmp.add_argument("--json", action="store_true", help=JSON_HELP)
    cmp.set_defaults(
        func=_compare,
        from_settings={"checkpoint": "checkpoint", "device": "device"},
        input_files=("image1", "image2", "checkpoint"),
    )


def _data(args: argparse.Namespace) -> int:
    from model.data.stanford_dogs import download_stanford_dogs

    train_dir = download_stanford_dogs(args.dir)
    if args.json:
        print(json.dumps({"train": str(train_dir), "test": str(train_dir.parent / "test")}))
    else:
        print(f"Stanford Dogs is ready: train on {train_dir}, evaluate on {train_dir.parent / 'test'}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from model.training.train import train

    if args.json:
        args.no_progress = True
    metrics = train(args)
    if metrics:
        result = {k: v for k, v in metrics.items() if k != "versions"}
        result["checkpoint"] = f"{args.out}/best.pt"
        print(json.dumps(result, indent=None if args.json else 2))
        if not args.json:
            print(f"checkpoint: {args.out}/best.pt  loss curve: {args.out}/loss.png")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from model.evaluation.report import evaluate_checkpoint, format_report

    report = evaluate_checkpoint(
        args.checkpoint,
        args.data,
        out=args.plots,
        device=args.device,
        workers=args.workers,
        progress=not args.json,
        queries=args.queries,
    )
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def _compare(args: argparse.Namespace) -> int:
    from model.evaluation.report import compare_images

    result = compare_images(args.image1, args.image2, args.checkpoint, device=args.device, precision=args.precision)
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        verdict = "same" if result.same else "different"
        line = f"Dissimilarity: {result.dissimilarity:.3f}  (threshold {result.threshold:.3f})  -> {verdict}"
        print(line if result.same_probability is None else f"{line}  (P(same) {result.same_probability:.2f})")
    return 0
