"""A full, read-only or failing disk during a change: a typed error, the gallery exactly as it was (in memory,
on disk, after a restart), searches unharmed. Real kernel-enforced failures where the kernel allows it here
(a file-size limit gives EFBIG on write), injected errno values for the rest."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

import index.compaction
from index import GalleryIndex, StorageError, StorageFullError, StorageUnavailableError
from index.wal import segments
from tests.index.conftest import MANUAL, clustered, new_items

ROOT = Path(__file__).resolve().parents[2]


def _state(gi: GalleryIndex) -> tuple[object, ...]:
    """Everything a client can see: version, count, labels, listing, a search, one item."""
    query = clustered(1, 16, seed=42)
    hits = [(h.id, round(h.similarity, 5), h.label) for h in gi.search(query, 10)[0]]
    return gi.version, gi.count, gi.labels(), [r.id for r in gi.items(0, 1000)[0]], hits, gi.get(3)


def _gallery(tmp_path: Path) -> GalleryIndex:
    gi = GalleryIndex.create(tmp_path / "idx", model_hash="h" * 64, backbone="b", dim=16, policy=MANUAL)
    gi.add(clustered(30, 16), new_items(30))
    gi.compact()
    gi.add(clustered(5, 16, seed=1), new_items(5, start=30))  # some of it in the log
    gi.remove([4])
    return gi


@pytest.mark.parametrize(
    ("call", "code", "error"),
    [
        ("pwrite", errno.ENOSPC, StorageFullError),
        ("pwrite", errno.EROFS, StorageUnavailableError),
        ("fdatasync", errno.EIO, StorageUnavailableError),
        ("fdatasync", errno.ENOSPC, StorageFullError),
    ],
)
def test_failed_change_leaves_the_gallery_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, call: str, code: int, error: type[Exception]
) -> None:
    gi = _gallery(tmp_path)
    before = _state(gi)
    [(_, log_path)] = segments(gi.index_dir)
    size = log_path.stat().st_size

    def fail(*args: object) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, call, fail)
    attempts = [
        lambda: gi.add(clustered(2, 16, seed=9), new_items(2, start=500)),
        lambda: gi.remove([1, 2]),
        lambda: gi.relabel(3, "elsewhere"),
        lambda: gi.set_search_params(nprobe=3),
    ]
    for attempt in attempts:
        with pytest.raises(error) as caught:
            attempt()
        assert isinstance(caught.value, StorageError) and caught.value.errno == code
        assert _state(gi) == before  # nothing published
    # Concurrent writers of one failed batch all get the error; none of their changes shows.
    failures: list[BaseException] = []

    def write(i: int) -> None:
        try:
            gi.add(clustered(1, 16, seed=100 + i), new_items(1, start=600 + i))
        except StorageError as exc:
            failures.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(failures) == 8 and _state(gi) == before
    assert log_path.stat().st_size == size  # nothing of any failed batch is left in the log
    monkeypatch.undo()
    # The disk is back: the next change takes the next version and the next id, as if nothing happened.
    assert gi.add(clustered(1, 16, seed=7), new_items(1, start=700)) == [35] and gi.version == before[0] + 1
    gi.close()
    reopened = GalleryIndex.open(gi.index_dir)
    assert reopened.version == before[0] + 1 and reopened.count == before[1] + 1
    assert reopened.get(3).label == before[5].label and reopened.get(1) is not None  # type: ignore[union-attr]


def test_failed_compaction_changes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gi = _gallery(tmp_path)
    before, base, logs = _state(gi), gi.base_version, segments(gi.index_dir)

    def full(index: object, path: Path) -> None:
        raise StorageFullError(errno.ENOSPC, "No space left to write the index")

    monkeypatch.setattr(index.compaction, "write_faiss", full)
    with pytest.raises(StorageFullError):
        gi.compact()
    assert _state(gi) == before and gi.base_version == base
    assert [p.name for p in (gi.index_dir / "snapshots").iterdir() if p.name.startswith(".tmp")] == []
    assert gi.add(clustered(1, 16, seed=8), new_items(1, start=800)) == [35]  # writes go on
    monkeypatch.undo()
    assert gi.compact() == before[0] + 1  # the next attempt folds in everything, the sealed part too
    assert gi.pending == 0 and [p for _, p in segments(gi.index_dir)] != [p for _, p in logs]
    gi.close()
    assert GalleryIndex.open(gi.index_dir).count == before[1] + 1


def test_a_full_disk_on_close_keeps_the_log_and_still_closes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The service closes with compact=True on shutdown; a disk that refuses the new base must not fail the
    shutdown nor keep the writer lock: the log holds every change and the next open replays it."""
    gi = _gallery(tmp_path)
    before, base = _state(gi), gi.base_version

    def full(index: object, path: Path) -> None:
        raise StorageFullError(errno.ENOSPC, "No space left to write the index")

    monkeypatch.setattr(index.compaction, "write_faiss", full)
    gi.close(compact=True)
    monkeypatch.undo()
    again = GalleryIndex.open(gi.index_dir)
    assert _state(again) == before and again.base_version == base and again.pending > 0
    assert again.add(clustered(1, 16, seed=9), new_items(1, start=900)) == [35]  # the writer lock was released
    again.close()


# A child process under a file-size limit (RLIMIT_FSIZE, SIGXFSZ ignored): the kernel fails the write that
# crosses it with EFBIG, after writing what fits. Adds until one fails, then tries a compaction (the index
# file is bigger than the limit), and reports what it saw.
CHILD = textwrap.dedent(
    """
    import json, resource, signal, sys
    from index import CompactionPolicy, GalleryIndex, StorageError
    from index.wal import segments
    from tests.index.conftest import clustered, new_items

    gi = GalleryIndex.open(sys.argv[1], writer=True, policy=CompactionPolicy(background=False))
    [(_, log)] = segments(gi.index_dir)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    limit = log.stat().st_size + 4000  # room for a few adds of 3 items (about 700 bytes each)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    acked, failure = [], None
    for i in range(100):
        before = (gi.version, gi.count, [h.id for h in gi.search(clustered(1, 16, seed=42), 5)[0]])
        try:
            acked += gi.add(clustered(3, 16, seed=1000 + i), new_items(3, start=1000 + 3 * i))
        except StorageError as exc:
            after = (gi.version, gi.count, [h.id for h in gi.search(clustered(1, 16, seed=42), 5)[0]])
            failure = {"type": type(exc).__name__, "errno": exc.errno, "unchanged": before == after,
                       "log_size": log.stat().st_size, "limit": limit}
            break
    try:
        gi.compact()
        compaction = "done"
    except StorageError as exc:
        compaction = type(exc).__name__
    print(json.dumps({"acked": acked, "failure": failure, "compaction": compaction,
                      "version": gi.version, "count": gi.count}))
    """
)


def test_real_file_size_limit_fails_the_append_and_the_compaction(tmp_path: Path) -> None:
    gi = _gallery(tmp_path)
    gi.close()
    run = subprocess.run(
        [sys.executable, "-c", CHILD, str(gi.index_dir)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    failure = report["failure"]
    assert failure is not None and failure["type"] == "StorageFullError" and failure["errno"] == errno.EFBIG
    assert failure["unchanged"]  # version, count and search results as before the failed add
    assert failure["log_size"] < failure["limit"]  # the partial write was cut back off
    assert report["compaction"] == "StorageFullError"  # FAISS's write error, typed
    assert len(report["acked"]) >= 3
    reopened = GalleryIndex.open(gi.index_dir)  # the parent has no limit: everything acknowledged, no more
    assert reopened.version == report["version"] and reopened.count == report["count"]
    assert all(reopened.get(i) is not None for i in report["acked"])
    assert reopened.get(max(report["acked"]) + 1) is None
    assert [p for p in (gi.index_dir / "snapshots").iterdir() if p.name.startswith(".tmp")] == []
