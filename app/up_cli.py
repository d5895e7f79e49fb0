"""``imgsim up``: the one-command first run (data -> train or reuse -> index or update -> serve).

Every option has an ``IMGSIM_*`` default (environment, then ``.env``: ``app.settings``), so ``make run`` and the
container need no flags.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from app import first_run
from app.cli import command_settings


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "up",
        help="get data, train (or reuse) a model, build (or update) the index, and serve",
        description="The first run in one command. Each step is skipped when its output still matches. Every "
        "option left out is read from IMGSIM_* environment variables, then .env, then the defaults.",
    )
    p.add_argument(
        "--data",
        "--gallery",
        type=Path,
        help="folder-per-class photos (IMGSIM_DATA_DIR; default: ../shared/data/dogs if present, else Stanford "
        "Dogs downloaded into --download-dir)",
    )
    p.add_argument(
        "--run-dir", type=Path, help="training run folder holding best.pt (IMGSIM_RUN_DIR; default runs/default)"
    )
    p.add_argument(
        "--index", "--index-dir", type=Path, help="gallery index folder (IMGSIM_INDEX; default indexes/default)"
    )
    p.add_argument(
        "--download-dir",
        type=Path,
        help="where Stanford Dogs is downloaded when no photos are found "
        "(IMGSIM_DOWNLOAD_DIR; default data/stanford-dogs)",
    )
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (IMGSIM_DEVICE; default auto)")
    p.add_argument(
        "--train-args",
        help="extra `imgsim train` options as one string (IMGSIM_TRAIN_ARGS; default '--mode frozen': frozen "
        "backbone, minutes on 2 CPU cores)",
    )
    p.add_argument(
        "--ray",
        nargs="?",
        const="",
        default=None,
        metavar="ADDRESS",
        help="embed the gallery on a Ray cluster (without ADDRESS a local Ray); needs imgsim[scale] (docs/scale.md)",
    )
    p.add_argument("--retrain", action="store_true", help="train even when best.pt matches the data")
    p.add_argument("--host", help="address to serve on (IMGSIM_HOST; default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port to serve on (IMGSIM_PORT; default 8000)")
    p.add_argument("--no-serve", action="store_true", help="stop after the index (containers, CI)")
    p.add_argument("--json", action="store_true", help="with --no-serve: print what was prepared as one JSON object")
    names = ("data", "run_dir", "index", "download_dir", "device", "train_args", "host", "port")
    p.set_defaults(func=run, from_settings={name: "data_dir" if name == "data" else name for name in names})


def options_from_args(args: argparse.Namespace) -> first_run.UpOptions:
    """The options of the run: the flags given, over ``IMGSIM_*``, over ``.env``, over the defaults (the
    settings ``app.cli`` built and filled the options from)."""
    settings = command_settings(args)
    return first_run.UpOptions(
        data=settings.data_dir,
        run_dir=settings.run_dir,
        index_dir=settings.index,
        download_dir=settings.download_dir,
        device=settings.device,
        train_args=shlex.split(settings.train_args),
        retrain=args.retrain,
        ray=args.ray,
        host=settings.host,
        port=settings.port,
    )


def _ready(page: str, docs: str) -> None:
    print(f"imgsim is ready: open {page} (search page) and {docs} (API docs). Ctrl+C stops.", flush=True)


def run(args: argparse.Namespace) -> int:
    opts = options_from_args(args)
    try:
        prepared = first_run.prepare(opts)
    except first_run.FirstRunError as exc:
        print(f"imgsim up: {exc}", file=sys.stderr)
        return 2
    if args.no_serve and args.json:
        print(
            json.dumps(
                {
                    "data": str(prepared.data),
                    "checkpoint": str(prepared.checkpoint),
                    "index": str(prepared.index_dir),
                    "actions": prepared.actions,
                }
            )
        )
        return 0
    if args.no_serve:
        print(
            f"imgsim up: ready to serve {prepared.checkpoint} with the index {prepared.index_dir} "
            "(`imgsim serve`, or run `imgsim up` without --no-serve).",
            flush=True,
        )
        return 0
    return first_run.serve(prepared, opts, _ready, command_settings(args))
