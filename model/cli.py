"""``imgsim data``, ``train``, ``eval``, ``compare`` (owned by model/)."""

from __future__ import annotations

from typing import Any


def register(subparsers: Any) -> None:
    return None
