"""SIGKILL a writer anywhere, again and again: the gallery always opens, every acknowledged change is there,
no unacknowledged change is there in part, and no id is ever given to other content.

Each round starts tests/index/crash_child.py on the same gallery (three threads of random adds, removes and
relabels, compacting every ~40 changes in the background) and kills it with SIGKILL where it stopped at a
named point (in an append, between append and fsync, writing the next base, before and after the pointer
swap, creating a log segment) or at a random moment. Then the test recovers the gallery as the next writer
would and compares it with what the child's acknowledgements say must be there.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

from index import GalleryIndex
from tests.index.conftest import MANUAL
from tests.index.crash_child import DIM, vector_for

ROOT = Path(__file__).resolve().parents[2]
CHILD = Path(__file__).with_name("crash_child.py")
POINTS = ["append", "fsync", "compaction", "swap", "swapped", "rotate", "none"]
ROUNDS = 56


def run_child(index_dir: Path, point: str, nth: int, seed: int, rng: np.random.Generator) -> tuple[list[str], bool]:
    """Start the child, kill it at its stop (or at a random moment), return its lines and whether it stopped."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen(
        [sys.executable, str(CHILD), str(index_dir), point, str(nth), str(seed)], stdout=subprocess.PIPE, env=env
    )
    lines: list[str] = []
    paused = threading.Event()
    acked = threading.Event()

    def read() -> None:
        assert child.stdout is not None
        for raw in child.stdout:
            line = raw.decode().strip()
            lines.append(line)
            paused.set() if line == "PAUSED" else None
            acked.set() if line.startswith("ACK") else None

    reader = threading.Thread(target=read)
    reader.start()
    try:
        if point == "none":
            acked.wait(30)
            time.sleep(float(rng.uniform(0.0, 0.3)))
        else:
            paused.wait(30)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        reader.join(10)
    assert any(line == "READY" for line in lines), f"the child never opened the gallery: {lines[:5]}"
    return lines, paused.is_set()


class Expected:
    """What must be in the gallery: id -> (sha256, label), from the acknowledgements."""

    def __init__(self) -> None:
        self.items: dict[int, tuple[str, str]] = {}
        self.ever: dict[int, str] = {}  # every id ever seen, with its content: ids are never reused

    def replay(self, lines: list[str]) -> dict[int, list[str]]:
        """Apply the acknowledged changes; return each thread's change in flight (begun, never acknowledged)."""
        begun: dict[int, list[str]] = {}
        labels: dict[str, str] = {}
        for line in lines:
            kind, *rest = line.split()
            if kind not in ("BEGIN", "ACK"):
                continue
            tag, op, args = int(rest[0]), rest[1], rest[2:]
            if kind == "BEGIN":
                begun[tag] = [op, *args]
                if op == "add":
                    labels.update(a.split(":") for a in args)  # type: ignore[arg-type]
                continue
            del begun[tag]
            if op == "add":
                for pair in args:
                    item_id, sha = pair.split(":")
                    self.items[int(item_id)] = (sha, labels[sha])
            elif op == "remove":
                for item_id in args:
                    del self.items[int(item_id)]
            else:
                self.items[int(args[0])] = (self.items[int(args[0])][0], args[1])
        return begun

    def settle(self, begun: dict[int, list[str]], found: dict[int, tuple[str, str]]) -> None:
        """A change in flight is there whole or not at all; whichever it is, it is part of the gallery now."""
        by_sha = {sha: (i, label) for i, (sha, label) in found.items()}
        for op, *args in begun.values():
            if op == "add":
                shas = [a.split(":") for a in args]
                there = [s for s, _ in shas if s in by_sha]
                assert len(there) in (0, len(shas)), f"half of a batch add survived: {there} of {shas}"
                for sha, label in shas:
                    if sha in by_sha:
                        assert by_sha[sha][1] == label
                        self.items[by_sha[sha][0]] = (sha, label)
            elif op == "remove":
                gone = [int(i) for i in args if int(i) not in found]
                assert len(gone) in (0, len(args)), f"half of a removal happened: {gone} of {args}"
                for i in gone:
                    del self.items[i]
            else:
                item_id, label = int(args[0]), args[1]
                assert found[item_id][1] in (self.items[item_id][1], label)
                self.items[item_id] = found[item_id]


def check(gi: GalleryIndex, expected: Expected) -> None:
    found = {r.id: (r.sha256, r.label) for r in gi.all_records()}
    assert found == expected.items
    for item_id, (sha, _) in found.items():
        assert expected.ever.setdefault(item_id, sha) == sha, f"id {item_id} was given to other content"
    assert gi.view().next_id > max(expected.ever, default=-1)
    if not found:
        return
    ids = np.array(sorted(found))
    vectors = np.stack([vector_for(found[i][0]) for i in ids])
    for i in ids[:: max(1, len(ids) // 10)]:
        assert np.allclose(gi.vector(int(i)), vector_for(found[int(i)][0]), atol=1e-6)
    queries = np.random.default_rng(len(ids)).standard_normal((3, DIM)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    truth = ids[np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :10]]
    assert [[h.id for h in row] for row in gi.search(queries, 10)] == truth.tolist()


def test_sigkill_anywhere_loses_no_acknowledged_change(tmp_path: Path) -> None:
    index_dir = tmp_path / "idx"
    GalleryIndex.create(index_dir, model_hash="k" * 64, backbone="b", dim=DIM, policy=MANUAL).close()
    expected = Expected()
    rng = np.random.default_rng(12)
    stopped: Counter[str] = Counter()
    acks = 0
    for round_ in range(ROUNDS):
        point = POINTS[round_ % len(POINTS)]
        nth = int(rng.integers(1, 4 if point in ("compaction", "swap", "swapped", "rotate") else 8))
        lines, paused = run_child(index_dir, point, nth, round_, rng)
        stopped[point] += paused
        acks += sum(line.startswith("ACK") for line in lines)
        begun = expected.replay(lines)
        gi = GalleryIndex.open(index_dir, writer=True, policy=MANUAL)  # recover as the next writer would
        try:
            expected.settle(begun, {r.id: (r.sha256, r.label) for r in gi.all_records()})
            check(gi, expected)
        finally:
            gi.close()
    # Every named point was really reached, in most of its rounds; plenty of changes were acknowledged.
    assert all(stopped[p] >= ROUNDS // len(POINTS) - 2 for p in POINTS if p != "none"), stopped
    assert acks > 20 * ROUNDS, acks
    reopened = GalleryIndex.open(index_dir, policy=MANUAL)
    check(reopened, expected)
    assert reopened.pending < 10 * 40  # compactions kept the log short across all those kills
