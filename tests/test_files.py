from __future__ import annotations

import os
from pathlib import Path

import pytest

from model.core import files
from model.core.files import atomic_path, write_atomic


def test_write_atomic_replaces_the_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "file.bin"  # the folder is created
    write_atomic(target, b"old")
    write_atomic(target, "new é")
    assert target.read_bytes() == "new é".encode()
    assert sorted(p.name for p in target.parent.iterdir()) == ["file.bin"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path: Path) -> None:
    target = tmp_path / "file.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="disk full"), atomic_path(target) as tmp:
        tmp.write_text("half of the new")
        raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["file.txt"]


def test_the_temporary_lives_beside_the_target_until_the_block_ends(tmp_path: Path) -> None:
    target = tmp_path / "model.pt"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".model.pt.") and tmp.name.endswith(".tmp")
        tmp.write_bytes(b"x")
        assert not target.exists()  # readers never see a partly written target
    assert target.read_bytes() == b"x" and not tmp.exists()


def test_the_file_is_fsynced_before_the_rename_and_its_folder_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    real_fsync_path, real_replace = files.fsync_path, os.replace

    def fsync_path(path: str | Path) -> None:
        events.append("fsync folder" if Path(path).is_dir() else f"fsync {Path(path).suffix}")
        real_fsync_path(path)

    def replace(src: str | Path, dst: str | Path) -> None:
        events.append(f"replace {Path(dst).name}")
        real_replace(src, dst)

    monkeypatch.setattr(files, "fsync_path", fsync_path)
    monkeypatch.setattr(files.os, "replace", replace)
    write_atomic(tmp_path / "f.json", b"1")
    assert events == ["fsync .tmp", "replace f.json", "fsync folder"]
