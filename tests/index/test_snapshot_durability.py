"""Base snapshots: a kill -9 during compaction loses nothing, damaged files and other models are refused with
errors that say what to do, old (format 1) galleries open, one process writes."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from index import GalleryIndex, IndexConflictError, IndexCorruptError, IndexMismatchError
from index.snapshot import write_snapshot
from tests.index.conftest import MANUAL, clustered, new_items

ROOT = Path(__file__).resolve().parents[2]

# The child logs 50 adds (durable), then compacts; the patched step announces itself and hangs until killed.
CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import index.compaction, index.snapshot
    from index import CompactionPolicy, GalleryIndex
    from tests.index.conftest import clustered, new_items

    index_dir, marker, where = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]

    def hang(real):
        def patched(*args, **kwargs):
            if where == "metadata":  # leave a half-written file behind
                Path(args[1]).write_bytes(b"SQLite format 3\\0 half")
            marker.write_text("in compaction")
            time.sleep(60)
            return real(*args, **kwargs)
        return patched

    if where == "metadata":
        index.compaction.write_next_metadata = hang(index.compaction.write_next_metadata)
    else:  # snapshot directory renamed into place, CURRENT not yet switched
        index.snapshot._write_current = hang(index.snapshot._write_current)
    gi = GalleryIndex.open(index_dir, policy=CompactionPolicy(background=False))
    gi.add(clustered(50, 16, seed=3), new_items(50, start=1000))
    gi.compact()
    """
)


def _saved_index(tmp_path: Path, n: int = 40) -> GalleryIndex:
    """A closed gallery of ``n`` items, all in its base (version 2)."""
    gi = GalleryIndex.create(tmp_path / "idx", model_hash="a" * 64, backbone="seed-cnn", dim=16, policy=MANUAL)
    gi.add(clustered(n, 16), new_items(n))
    gi.compact()
    gi.close()
    return gi


@pytest.mark.parametrize("where", ["metadata", "current"])
def test_kill_9_mid_compaction_keeps_every_change(tmp_path: Path, where: str) -> None:
    gi = _saved_index(tmp_path)
    marker = tmp_path / "marker"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(gi.index_dir), str(marker), where], cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert child.poll() is None, "child exited before reaching the compaction"
            assert time.monotonic() < deadline, "child never reached the compaction"
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait()
    snaps = gi.index_dir / "snapshots"
    kept = ["snap-00000001", "snap-00000002"]  # the base and the one before
    assert sorted(p.name for p in snaps.iterdir()) != kept  # the dead compaction left something

    reopened = GalleryIndex.open(gi.index_dir, model_hash="a" * 64, dim=16, writer=True, policy=MANUAL)
    assert reopened.version == 3 and reopened.count == 90  # base 2 + the logged batch of 50
    assert reopened.base_version == 2 and reopened.pending == 50
    assert sorted(p.name for p in snaps.iterdir()) == kept  # the writer cleaned the rest
    assert reopened.search(clustered(50, 16, seed=3)[:1], 1)[0][0].id == 40
    assert reopened.compact() == 3  # and the next compaction takes the number the dead one had
    reopened.close()
    assert GalleryIndex.open(gi.index_dir).count == 90


def test_mismatched_model_or_dimension_refused(tmp_path: Path) -> None:
    gi = _saved_index(tmp_path)
    with pytest.raises(IndexMismatchError, match=r"not by this checkpoint.*Rebuild it with `imgsim index build"):
        GalleryIndex.open(gi.index_dir, model_hash="b" * 64)
    with pytest.raises(IndexMismatchError, match="16-d vectors; this model makes 32-d"):
        GalleryIndex.open(gi.index_dir, dim=32)
    assert isinstance(IndexMismatchError("x"), ValueError)


def _current(gi: GalleryIndex) -> Path:
    return gi.index_dir / "snapshots" / (gi.index_dir / "CURRENT").read_text().strip()


def test_damaged_index_file_refused(tmp_path: Path) -> None:
    gi = _saved_index(tmp_path)
    path = _current(gi) / "index.faiss"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(IndexCorruptError, match=r"index.faiss is damaged .*Rebuild the index"):
        GalleryIndex.open(gi.index_dir)


def test_unreadable_index_with_matching_checksum_refused(tmp_path: Path) -> None:
    gi = _saved_index(tmp_path)
    snap = _current(gi)
    (snap / "index.faiss").write_bytes(b"not a faiss index")
    manifest = json.loads((snap / "manifest.json").read_text())
    manifest["checksums"]["index.faiss"] = hashlib.sha256(b"not a faiss index").hexdigest()
    (snap / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexCorruptError, match=r"cannot be read by FAISS\. Rebuild"):
        GalleryIndex.open(gi.index_dir)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda snap: (snap / "metadata.sqlite").write_bytes(b"junk"), "metadata.sqlite is damaged"),
        (lambda snap: (snap / "manifest.json").write_text("{not json"), "manifest.json is damaged"),
        (lambda snap: (snap / "manifest.json").unlink(), "has no manifest"),
        (lambda snap: (snap / "index.faiss").unlink(), "index.faiss is missing"),
        (lambda snap: (snap.parent.parent / "CURRENT").write_text("garbage"), "does not name a snapshot"),
    ],
)
def test_other_damage_refused(tmp_path: Path, damage, message: str) -> None:  # type: ignore[no-untyped-def]
    gi = _saved_index(tmp_path)
    damage(_current(gi))
    with pytest.raises(IndexCorruptError, match=message):
        GalleryIndex.open(gi.index_dir)


def test_format_1_gallery_opens_as_a_base_with_an_empty_log(tmp_path: Path) -> None:
    """What the snapshot-per-save code wrote: format 1, no label_counts table, no log folder."""
    gi = _saved_index(tmp_path, n=30)
    snap = _current(gi)
    import shutil
    import sqlite3

    old = tmp_path / "old"
    old.mkdir()
    manifest = json.loads((snap / "manifest.json").read_text())
    manifest["format_version"] = 1
    from index.snapshot import Manifest

    def write_files(folder: Path) -> None:
        shutil.copy(snap / "index.faiss", folder / "index.faiss")
        shutil.copy(snap / "metadata.sqlite", folder / "metadata.sqlite")
        with sqlite3.connect(folder / "metadata.sqlite") as db:
            db.execute("DROP TABLE label_counts")

    write_snapshot(old, Manifest.from_dict(manifest), write_files)
    assert not (old / "log").exists()
    opened = GalleryIndex.open(old, policy=MANUAL)
    assert opened.count == 30 and opened.pending == 0 and opened.labels() == {"cls0": 10, "cls1": 10, "cls2": 10}
    assert opened.add(clustered(1, 16, seed=4), new_items(1, start=500)) == [30]
    opened.close()
    reopened = GalleryIndex.open(old, policy=MANUAL)
    assert reopened.count == 31
    reopened.compact()  # its next base is format 2
    assert json.loads((_current(reopened) / "manifest.json").read_text())["format_version"] == 2
    reopened.close()


def test_stale_temporaries_cleaned_when_writing_starts(tmp_path: Path) -> None:
    gi = _saved_index(tmp_path)
    (gi.index_dir / "snapshots" / ".tmp-snap-00000003-999").mkdir()
    (gi.index_dir / ".CURRENT.999.tmp").write_text("snap-00000003")
    reader = GalleryIndex.open(gi.index_dir)  # a reader leaves them alone: a writer may be using them
    assert (gi.index_dir / ".CURRENT.999.tmp").exists()
    reader.ensure_writer()
    assert not (gi.index_dir / ".CURRENT.999.tmp").exists()
    assert not (gi.index_dir / "snapshots" / ".tmp-snap-00000003-999").exists()
    reader.close()


def test_one_writer_per_gallery(tmp_path: Path) -> None:
    gi = _saved_index(tmp_path)
    writer = GalleryIndex.open(gi.index_dir, writer=True, policy=MANUAL)
    other = GalleryIndex.open(gi.index_dir)  # reading needs no lock
    with pytest.raises(IndexConflictError, match=rf"written by this process {os.getpid()} .*send changes"):
        other.remove([1])
    assert other.get(1) is not None and writer.get(1) is not None  # the refused change did nothing
    script = "import sys; from index import GalleryIndex; GalleryIndex.open(sys.argv[1]).remove([1])"
    run = subprocess.run([sys.executable, "-c", script, str(gi.index_dir)], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 1 and f"being written by pid {os.getpid()}" in run.stderr
    writer.remove([2])
    writer.close()  # releasing the lock lets the other one write, after catching up with what it missed
    assert other.remove([1]) == [1] and other.get(2) is None and other.count == 38
    other.close()
