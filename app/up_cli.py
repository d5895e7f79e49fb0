"""``imgsim up``: the one-command first run (owned by the container/first-run work)."""

from __future__ import annotations

from typing import Any


def register(subparsers: Any) -> None:
    return None
