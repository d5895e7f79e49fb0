"""One writer per gallery: an exclusive ``flock`` on ``INDEX_DIR/writer.lock``, holding who holds it.

Readers never lock. A process takes the lock when it first writes (or opens with ``writer=True``) and keeps
it until it closes the gallery or exits: the kernel drops it when the process dies, ``kill -9`` included, so
there is nothing stale to clean. ``flock`` locks belong to an open file, so a second ``GalleryIndex`` of the
same folder in the same process is refused too.
"""

from __future__ import annotations

import fcntl
import gc
import json
import os
import socket
import sys
import time
from pathlib import Path

from index.errors import IndexConflictError

LOCK_FILE = "writer.lock"


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info.get("pid"):
        return "another process"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("since", 0)))
    who = "this process" if info["pid"] == os.getpid() and info.get("host") == socket.gethostname() else "pid"
    return f"{who} {info['pid']} on {info.get('host', '?')} (`{info.get('command', '?')}`, since {since})"


class WriterLock:
    def __init__(self, path: Path, fd: int) -> None:
        self.path, self._fd = path, fd

    @classmethod
    def acquire(cls, index_dir: Path) -> WriterLock:
        path = index_dir / LOCK_FILE
        try:
            return cls._try(path)
        except BlockingIOError:
            # flock belongs to an open file: a closed-over GalleryIndex of this process that is garbage but
            # not yet collected (a reference cycle) still holds it. Collect once before calling it a conflict.
            gc.collect()
        try:
            return cls._try(path)
        except BlockingIOError:
            raise IndexConflictError(
                f"{index_dir} is being written by {_holder(path)}. One process writes a gallery at a time: "
                "send changes to that process (the service: POST / DELETE /v1/gallery) or stop it first."
            ) from None

    @classmethod
    def _try(cls, path: Path) -> WriterLock:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BaseException:
            os.close(fd)
            raise
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": " ".join([os.path.basename(sys.argv[0]), *sys.argv[1:]])[:200],
            "since": time.time(),
        }
        try:  # who holds it, for the error message of the next one who tries: best effort (a full disk)
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps(info).encode())
        except OSError:
            pass
        return cls(path, fd)

    def release(self) -> None:
        if self._fd >= 0:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = -1
