"""Snapshots survive kill -9, damaged files and other models are refused with errors that say what to do."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from index import GalleryIndex, IndexConflictError, IndexCorruptError, IndexMismatchError
from tests.index.conftest import clustered, new_items

ROOT = Path(__file__).resolve().parents[2]

# The child adds 50 items and saves, but the patched step announces itself and hangs until killed.
CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import index.gallery, index.snapshot
    from index import GalleryIndex
    from tests.index.conftest import clustered, new_items

    index_dir, marker, where = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]

    def hang(real):
        def patched(*args, **kwargs):
            if where == "metadata":  # leave a half-written file behind
                Path(args[1]).write_bytes(b"SQLite format 3\\0 half")
            marker.write_text("in save")
            time.sleep(60)
            return real(*args, **kwargs)
        return patched

    if where == "metadata":
        index.gallery.write_metadata = hang(index.gallery.write_metadata)
    else:  # snapshot directory renamed into place, CURRENT not yet switched
        index.snapshot._write_current = hang(index.snapshot._write_current)
    gi = GalleryIndex.open(index_dir)
    gi.add(clustered(50, 16, seed=3), new_items(50, start=1000))
    gi.save()
    """
)


def _saved_index(tmp_path: Path, n: int = 40) -> GalleryIndex:
    gi = GalleryIndex.create(tmp_path / "idx", model_hash="a" * 64, backbone="seed-cnn", dim=16)
    gi.add(clustered(n, 16), new_items(n))
    gi.save()
    return gi


@pytest.mark.parametrize("where", ["metadata", "current"])
def test_kill_9_mid_save_keeps_previous_snapshot(tmp_path: Path, where: str) -> None:
    gi = _saved_index(tmp_path)
    marker = tmp_path / "marker"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(gi.index_dir), str(marker), where], cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert child.poll() is None, "child exited before reaching the save"
            assert time.monotonic() < deadline, "child never reached the save"
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait()
    snaps = gi.index_dir / "snapshots"
    leftovers = [p.name for p in snaps.iterdir() if p.name not in ("snap-00000001", "snap-00000002")]
    assert leftovers  # the interrupted save did leave something behind

    reopened = GalleryIndex.open(gi.index_dir, model_hash="a" * 64, dim=16)
    assert reopened.version == 2 and reopened.count == reopened.ntotal == 40
    assert sorted(p.name for p in snaps.iterdir()) == ["snap-00000001", "snap-00000002"]  # stale ones cleaned
    assert reopened.search(clustered(40, 16)[:1], 1)[0][0].id == 0
    assert reopened.save() == 3  # and the next save takes the number the dead one had


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
    manifest["checksums"]["index.faiss"] = __import__("hashlib").sha256(b"not a faiss index").hexdigest()
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


def test_stale_temporaries_cleaned_at_open(tmp_path: Path) -> None:
    gi = _saved_index(tmp_path)
    (gi.index_dir / "snapshots" / ".tmp-snap-00000003-999").mkdir()
    (gi.index_dir / ".CURRENT.999.tmp").write_text("snap-00000003")
    GalleryIndex.open(gi.index_dir)
    assert not (gi.index_dir / ".CURRENT.999.tmp").exists()
    assert not (gi.index_dir / "snapshots" / ".tmp-snap-00000003-999").exists()


def test_save_refuses_to_overwrite_another_writer(tmp_path: Path) -> None:
    gi = _saved_index(tmp_path)
    other = GalleryIndex.open(gi.index_dir)
    other.remove([1])
    other.save()
    gi.remove([2])
    with pytest.raises(IndexConflictError, match="another process changed it"):
        gi.save()
    assert GalleryIndex.open(gi.index_dir).get(2) is not None


def test_random_kills_always_leave_a_loadable_index(tmp_path: Path) -> None:
    """Kill real saves (no patching) at random moments: each time one whole version loads."""
    gi = _saved_index(tmp_path, n=2000)
    script = textwrap.dedent(
        """
        import sys
        from index import GalleryIndex
        from tests.index.conftest import clustered, new_items
        from pathlib import Path
        gi = GalleryIndex.open(sys.argv[1])
        Path(sys.argv[2]).write_text("saving")
        for j in range(1000):
            gi.add(clustered(10, 16, seed=j), new_items(10, start=10_000 + 10 * gi.version))
            gi.save()
        """
    )
    rng = np.random.default_rng(0)
    marker = tmp_path / "marker"
    for _ in range(5):
        marker.unlink(missing_ok=True)
        child = subprocess.Popen([sys.executable, "-c", script, str(gi.index_dir), str(marker)], cwd=ROOT)
        while not marker.exists() and child.poll() is None:
            time.sleep(0.01)
        time.sleep(float(rng.uniform(0.05, 0.6)))
        child.kill()
        child.wait()
        reopened = GalleryIndex.open(gi.index_dir)
        assert reopened.count == reopened.ntotal == 2000 + 10 * (reopened.version - 2)
    assert reopened.version > 2  # saves did happen between the kills
