"""``imgsim``: one command, a subcommand per job. Each subcommand is a thin wrapper over a library function.

The subcommands are declared by the package that owns them (``model.cli``, ``index.cli``, ``app.serve_cli``,
``app.up_cli``), each with a ``register(subparsers)`` that adds its parsers and sets ``func``. A parser names
the options that fall back to the settings with ``set_defaults(from_settings={dest: source})``; this module builds
the one :class:`~app.settings.Settings` from the flags given (flag > ``IMGSIM_*`` > ``.env`` > default) and
fills every such option left out, so all commands share one vocabulary of defaults.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from app import locations
from app.request_id import RequestIdFilter
from app.settings import Settings

# A source an option can fall back to: the Settings field its flag sets, and how the value is read. Any other
# name is a Settings field, read as it is.
Source = tuple[str, Callable[[Settings], Any]]
SOURCES: dict[str, Source] = {
    "checkpoint": ("checkpoint", locations.model_checkpoint),
    "trained_checkpoint": ("checkpoint", locations.trained_checkpoint),
    "photos": ("data_dir", locations.photo_folder),
}


def _source(name: str) -> Source:
    return SOURCES.get(name, (name, lambda s: getattr(s, name)))


def settings_from_args(args: argparse.Namespace) -> Settings:
    """The settings with the flags given on top (kept as ``args.settings``); then every option left out takes
    its value from them."""
    wanted: dict[str, str] = getattr(args, "from_settings", None) or {}
    given = {_source(src)[0]: getattr(args, d) for d, src in wanted.items() if getattr(args, d, None) is not None}
    try:
        settings = Settings(**given)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc']))} (IMGSIM_{str(e['loc'][0]).upper()}): {e['msg']}" for e in exc.errors()
        )
        raise ValueError(f"invalid setting: {problems}") from None
    for dest, src in wanted.items():
        if getattr(args, dest, None) is None:
            setattr(args, dest, _source(src)[1](settings))
    args.settings = settings
    return settings


def command_settings(args: argparse.Namespace) -> Settings:
    """The settings ``main`` built for this command (built now when a test calls a command directly)."""
    settings = getattr(args, "settings", None)
    return settings if isinstance(settings, Settings) else settings_from_args(args)


def build_parser() -> argparse.ArgumentParser:
    from app import serve_cli, up_cli
    from index import cli as index_cli
    from model import cli as model_cli

    parser = argparse.ArgumentParser(
        prog="imgsim",
        description="Image similarity search: train, index, serve. Every option left out is read from IMGSIM_* "
        "environment variables, then from .env, then the defaults (runs/default, indexes/default).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    model_cli.register(subparsers)
    index_cli.register(subparsers)
    serve_cli.register(subparsers)
    up_cli.register(subparsers)
    return parser


def check_inputs(args: argparse.Namespace) -> None:
    """Every input file the command names must exist: checked before anything loads, each error naming it."""
    for dest in getattr(args, "input_files", ()):
        values = getattr(args, dest, None)
        for value in values if isinstance(values, list) else [values]:
            if value is None or Path(value).exists():
                continue
            if dest == "index" and str(value).startswith("milvus"):  # Milvus: opening it says what is wrong
                continue
            if dest == "checkpoint":
                raise FileNotFoundError(locations.missing_model_message(Path(value), args.settings))
            if dest == "index":
                raise FileNotFoundError(
                    f"No index at {value}: build one with `imgsim index build` (or `{args.settings.setup_command}`)."
                )
            raise FileNotFoundError(f"{value}: no such file or folder.")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s%(request_suffix)s",
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(RequestIdFilter())  # " [request id]" on what is logged while a request runs
    try:
        settings_from_args(args)
        check_inputs(args)
        return int(args.func(args) or 0)
    except (ValueError, OSError, RuntimeError) as exc:
        # Bad options, missing files, a full or read-only disk: the user's to fix, one clear line, no traceback.
        print(f"imgsim {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
