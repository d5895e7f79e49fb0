"""``imgsim up``: the one-command first run (data -> train or reuse -> index or update -> serve).

Every option has an ``IMGSIM_*`` environment default, so ``make run`` and the container need no flags.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from app import first_run

DEFAULT_TRAIN_ARGS = "--mode frozen"


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name, "").strip()
    return Path(value) if value else None


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "up",
        help="get data, train (or reuse) a model, build (or update) the index, and serve",
        description="The first run in one command. Each step is skipped when its output still matches.",
    )
    # Defaults are read from the environment when the command runs, not when the parser is built.
    p.add_argument(
        "--data",
        type=Path,
        help="folder-per-class gallery (env IMGSIM_DATA_DIR; default: ../shared/data/dogs if "
        "present, else Stanford Dogs downloaded into --download-dir)",
    )
    p.add_argument(
        "--run-dir",
        type=Path,
        help="training run folder holding best.pt (env IMGSIM_RUN_DIR; default runs/default)",
    )
    p.add_argument(
        "--index-dir", type=Path, help="gallery index folder (env IMGSIM_INDEX; default indexes/default)"
    )
    p.add_argument(
        "--download-dir",
        type=Path,
        default=Path("data/stanford-dogs"),
        help="where Stanford Dogs is downloaded when no gallery is found (default %(default)s)",
    )
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (env IMGSIM_DEVICE; default auto)")
    p.add_argument(
        "--train-args",
        help="extra `imgsim train` options as one string (env IMGSIM_TRAIN_ARGS; default "
        f"{DEFAULT_TRAIN_ARGS!r}: frozen backbone, minutes on 2 CPU cores)",
    )
    p.add_argument("--retrain", action="store_true", help="train even when best.pt matches the data")
    p.add_argument("--host", help="address to serve on (env IMGSIM_HOST; default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port to serve on (env IMGSIM_PORT; default 8000)")
    p.add_argument("--no-serve", action="store_true", help="stop after the index (containers, CI)")
    p.set_defaults(func=run)


def options_from_args(args: argparse.Namespace) -> first_run.UpOptions:
    """Flags first, then ``IMGSIM_*`` variables, then the defaults."""
    env = os.environ
    port = args.port if args.port is not None else env.get("IMGSIM_PORT", "8000")
    try:
        port = int(port)
    except ValueError:
        raise ValueError(f"IMGSIM_PORT must be a port number, got {port!r}.") from None
    return first_run.UpOptions(
        data=args.data or _env_path("IMGSIM_DATA_DIR"),
        run_dir=args.run_dir or _env_path("IMGSIM_RUN_DIR") or Path("runs/default"),
        index_dir=args.index_dir or _env_path("IMGSIM_INDEX") or Path("indexes/default"),
        download_dir=args.download_dir,
        device=args.device or env.get("IMGSIM_DEVICE", "auto"),
        train_args=shlex.split(args.train_args or env.get("IMGSIM_TRAIN_ARGS", DEFAULT_TRAIN_ARGS)),
        retrain=args.retrain,
        host=args.host or env.get("IMGSIM_HOST", "127.0.0.1"),
        port=port,
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
    if args.no_serve:
        print(
            f"imgsim up: ready to serve {prepared.checkpoint} with the index {prepared.index_dir} "
            "(`imgsim serve`, or run `imgsim up` without --no-serve).",
            flush=True,
        )
        return 0
    return first_run.serve(prepared, opts, _ready)
