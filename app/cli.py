"""``imgsim``: one command, a subcommand per job. Each subcommand is a thin wrapper over a library function.

The subcommands are declared by the package that owns them (``model.cli``, ``index.cli``, ``app.serve_cli``),
each with a ``register(subparsers)`` that adds its parsers and sets ``func``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    from app import serve_cli, up_cli
    from index import cli as index_cli
    from model import cli as model_cli

    parser = argparse.ArgumentParser(
        prog="imgsim", description="Image similarity search: train, index, serve."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    model_cli.register(subparsers)
    index_cli.register(subparsers)
    serve_cli.register(subparsers)
    up_cli.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError, RuntimeError) as exc:
        # Bad options, missing files, a full or read-only disk: the user's to fix, one clear line, no traceback.
        print(f"imgsim {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
