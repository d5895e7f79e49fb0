"""Files a kill -9 leaves in media/ (temp files, uploads no item points to) are swept by the writer in the
background; files of items, files still young, and files of other names stay."""

from __future__ import annotations

import os
import time
from pathlib import Path

from index import CompactionPolicy, GalleryIndex, NewItem
from tests.index.conftest import clustered


def _touch(path: Path, age_s: float) -> Path:
    path.write_bytes(b"x")
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path


def test_writer_sweeps_orphans_and_temp_files(tmp_path: Path) -> None:
    policy = CompactionPolicy(background=False, media_grace_s=600)
    gi = GalleryIndex.create(tmp_path / "idx", model_hash="h" * 64, backbone="b", dim=16, policy=policy)
    kept_sha, orphan_sha, young_sha = "a" * 64, "b" * 64, "c" * 64
    gi.add(clustered(1, 16), [NewItem(f"media/{kept_sha}.jpg", "x", kept_sha, 1, 1)])
    gi.close()
    media = gi.index_dir / "media"
    media.mkdir()
    kept = _touch(media / f"{kept_sha}.jpg", 3600)
    orphan = _touch(media / f"{orphan_sha}.jpg", 3600)  # its add was never logged (killed in between)
    temp = _touch(media / f".{orphan_sha}.jpg.k2j3.tmp", 3600)  # a write killed before its rename
    foreign = _touch(media / "notes.txt", 3600)
    reader = GalleryIndex.open(gi.index_dir, policy=policy)
    reader.close()
    assert orphan.exists() and temp.exists()  # a reader never sweeps: the writer may be mid-add
    writer = GalleryIndex.open(gi.index_dir, writer=True, policy=policy)
    young = _touch(media / f"{young_sha}.jpg", 0)  # an add in flight: written after the writer started
    writer.close()  # waits for the background sweep
    assert kept.exists() and foreign.exists() and young.exists()
    assert not orphan.exists() and not temp.exists()
