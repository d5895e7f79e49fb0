"""The writer process that tests/index/test_crash.py kills: random changes from several threads, each
announced before it is submitted and reported when acknowledged, on stdout (one short line, one write).

    python tests/index/crash_child.py INDEX_DIR POINT NTH SEED

POINT names where to stop and wait for the SIGKILL, the NTH time the process gets there: ``append`` (half
of a batch written), ``fsync`` (a batch written, not yet synced), ``compaction`` (writing the next base's
index file), ``swap`` (the base's snapshot renamed in, ``CURRENT`` not yet replaced), ``swapped``
(``CURRENT`` replaced, the old log not yet deleted), ``rotate`` (a new log segment being created); ``none``:
never stop (the test kills it at a random moment). Stopping is done by replacing those functions here,
in the child, so the library carries no test hooks.
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

import index.compaction
import index.snapshot
import index.wal
from index import CompactionPolicy, GalleryIndex, NewItem

DIM = 8
LABELS = ("a", "b", "c")


def vector_for(sha: str) -> np.ndarray:
    """The vector of an item, from its content hash: the test recomputes it."""
    v = np.random.default_rng(int(sha[:12], 16)).standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def say(line: str) -> None:
    os.write(1, (line + "\n").encode())  # one write per line: lines of several threads never interleave


def stop_at(point: str, nth: int) -> None:
    seen = {"n": 0}
    lock = threading.Lock()

    def arrive() -> None:
        with lock:
            seen["n"] += 1
            if seen["n"] != nth:
                return
        say("PAUSED")
        time.sleep(3600)

    def wrap(owner: Any, name: str, before: bool = True, half: bool = False) -> None:
        real = getattr(owner, name)

        def patched(*args: Any, **kwargs: Any) -> Any:
            if half:  # LogWriter._write_at(self, data, offset): half of it reaches the file first
                self_, data, offset = args
                if seen["n"] + 1 == nth:
                    os.pwrite(self_._fd, bytes(data)[: len(data) // 2], offset)
            if before:
                arrive()
            result = real(*args, **kwargs)
            if not before:
                arrive()
            return result

        setattr(owner, name, patched)

    if point == "append":
        wrap(index.wal.LogWriter, "_write_at", half=True)
    elif point == "fsync":
        wrap(index.wal, "_sync")
    elif point == "compaction":
        wrap(index.compaction, "write_faiss")
    elif point == "swap":
        wrap(index.snapshot, "_write_current")
    elif point == "swapped":
        wrap(index.snapshot, "_write_current", before=False)
    elif point == "rotate":
        wrap(index.wal.LogWriter, "create")


def writer(gi: GalleryIndex, tag: int, seed: int) -> None:
    """Random changes; each thread removes and relabels only ids it added, so per id they are in order.
    Lines carry the thread's tag: the test pairs each BEGIN with its ACK."""
    rng = np.random.default_rng(seed)
    mine: list[int] = []
    while True:
        op = rng.choice(["add", "add", "remove", "relabel"]) if mine else "add"
        if op == "add":
            shas = [hashlib.sha256(f"{seed}-{rng.integers(1 << 62)}".encode()).hexdigest() for _ in range(3)]
            items = [NewItem(f"{s[:8]}.png", str(rng.choice(LABELS)), s, 1, 1) for s in shas]
            say(f"BEGIN {tag} add " + " ".join(f"{s}:{it.label}" for s, it in zip(shas, items, strict=True)))
            ids = gi.add(np.stack([vector_for(s) for s in shas]), items)
            say(f"ACK {tag} add " + " ".join(f"{i}:{s}" for i, s in zip(ids, shas, strict=True)))
            mine += ids
        elif op == "remove":
            victims = [mine.pop(int(rng.integers(len(mine)))) for _ in range(min(2, len(mine)))]
            say(f"BEGIN {tag} remove " + " ".join(map(str, victims)))
            gi.remove(victims)
            say(f"ACK {tag} remove " + " ".join(map(str, victims)))
        else:
            target, label = int(rng.choice(mine)), str(rng.choice(LABELS))
            say(f"BEGIN {tag} relabel {target} {label}")
            gi.relabel(target, label)
            say(f"ACK {tag} relabel {target} {label}")


def main() -> None:
    index_dir, point, nth, seed = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    stop_at(point, nth)
    policy = CompactionPolicy(max_changes=40)  # compactions often, in the background, while writes go on
    gi = GalleryIndex.open(index_dir, writer=True, policy=policy)
    say("READY")
    threads = [threading.Thread(target=writer, args=(gi, t, seed * 10 + t), daemon=True) for t in range(3)]
    for t in threads:
        t.start()
    time.sleep(3600)


if __name__ == "__main__":
    main()
