"""``imgsim serve`` (owned by the service; filled in by the REST service work)."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser("serve", help="serve the REST API and web page")
    p.set_defaults(func=lambda args: (_ for _ in ()).throw(RuntimeError("imgsim serve is not built yet")))
