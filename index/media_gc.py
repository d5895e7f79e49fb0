"""Sweep ``INDEX_DIR/media/``: temp files and uploads that no item points to (left by a ``kill -9``).

The service writes an upload's file first and logs the add after, and logs a removal before deleting the
file, so a crash between the two leaves a file nobody points to (or a ``.*.tmp`` of an unfinished write).
The gallery's writer sweeps them in a background thread, when it starts writing and after each compaction,
never in the open path: the sweep lists the folder and looks each upload up by its sha256 (an indexed
query). Only files last modified before ``older_than`` are touched, so an add in flight (its file written,
its log record not yet) is never swept; only names the service makes (``<sha256>[-<token>].<ext>``) are.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from pathlib import Path

from index.view import View

log = logging.getLogger(__name__)
_UPLOAD = re.compile(r"^([0-9a-f]{64})(?:-[0-9a-z]+)?\.[a-z]+$")


def sweep_media(media_dir: Path, current: Callable[[], View], older_than: float) -> tuple[int, int]:
    """Remove stale temp files and orphan uploads modified before ``older_than`` (unix time).

    ``current()`` gives the newest published view (taken per file, so adds committed meanwhile count).
    Returns (temp files, orphans) removed."""
    temps = orphans = 0
    if not media_dir.is_dir():
        return 0, 0
    with os.scandir(media_dir) as entries:
        for entry in entries:
            try:
                if not entry.is_file(follow_symlinks=False) or entry.stat().st_mtime >= older_than:
                    continue
            except FileNotFoundError:
                continue
            if entry.name.startswith(".") and entry.name.endswith(".tmp"):
                temps += _unlink(entry.path)
                continue
            match = _UPLOAD.match(entry.name)
            if match is None:
                continue  # not a name the service makes: someone else's file
            view = current()
            item_id = view.id_for_sha(match.group(1))
            record = view.get(item_id) if item_id is not None else None
            if record is None or record.path != f"media/{entry.name}":
                orphans += _unlink(entry.path)
    if temps or orphans:
        log.warning("media sweep in %s: removed %d temp files and %d orphan uploads", media_dir, temps, orphans)
    return temps, orphans


def _unlink(path: str) -> int:
    try:
        os.unlink(path)
    except FileNotFoundError:
        return 0
    except OSError as exc:  # a read-only disk: leave it for the next sweep
        log.warning("cannot remove %s: %s", path, exc)
        return 0
    return 1
