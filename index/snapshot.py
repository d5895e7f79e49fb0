"""Durable snapshots on disk (the gallery's bases): one directory per version, a manifest, a ``CURRENT`` pointer.

Layout::

    INDEX_DIR/CURRENT                       "snap-00000007": the live base
    INDEX_DIR/snapshots/snap-00000007/      index.faiss, metadata.sqlite, manifest.json
    INDEX_DIR/log/                          changes since the base (index/wal.py)
    INDEX_DIR/media/                        uploads kept by the service

A snapshot is written aside (``.tmp-...``), every file and the directory fsynced, renamed into place,
``snapshots/`` fsynced, then ``CURRENT`` replaced the same way. A ``kill -9`` at any point leaves the
previous ``CURRENT`` and its snapshot intact; the writer removes leftovers (:func:`clean_stale`).

Format 2 is format 1 plus a log that may follow the snapshot; format 1 snapshots (galleries from before
the log) open as a base with an empty log. The number changed so that older code, which would ignore the
log and silently serve a stale gallery, refuses format 2 instead.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from index.errors import IndexCorruptError
from model.core.files import fsync_path, write_atomic

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)
INDEX_FILE = "index.faiss"
META_FILE = "metadata.sqlite"
MANIFEST_FILE = "manifest.json"
KEEP_SNAPSHOTS = 2  # the current base and the one before (the log that led past it is gone)
_SNAP = re.compile(r"^snap-(\d{8})$")


@dataclass
class Manifest:
    version: int
    model_hash: str
    backbone: str
    dim: int
    count: int
    factory: str
    created: float
    saved_at: float = 0.0
    next_id: int = 0
    gallery_root: str | None = None
    checkpoint: str | None = None
    # What the vectors were computed in (the embedder's precision). Absent in galleries made before int8: fp32.
    precision: str = "fp32"
    search_params: dict[str, float] = field(default_factory=dict)
    rerank: bool = False  # re-rank from an 8-bit copy of the vectors on disk (index/rerank.py)
    checksums: dict[str, str] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


def snapshot_name(version: int) -> str:
    return f"snap-{version:08d}"


def snapshots_dir(index_dir: Path) -> Path:
    return index_dir / "snapshots"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def read_current(index_dir: Path) -> int | None:
    path = index_dir / "CURRENT"
    if not path.is_file():
        return None
    match = _SNAP.match(path.read_text().strip())
    if not match:
        raise IndexCorruptError(f"{path} does not name a snapshot. Rebuild the index with `imgsim index build`.")
    return int(match.group(1))


def _write_current(index_dir: Path, version: int) -> None:
    """The commit point of a snapshot: ``CURRENT`` names it, durably (temp file, fsync, rename, fsync dir)."""
    write_atomic(index_dir / "CURRENT", snapshot_name(version) + "\n")


def clean_stale(index_dir: Path) -> None:
    """Remove what an interrupted snapshot write left: temp files, snapshots newer than ``CURRENT``.

    Only the gallery's writer (holding its lock) calls this: anyone else might remove a write in progress."""
    current = read_current(index_dir)
    for tmp in index_dir.glob(".CURRENT.*.tmp"):
        log.warning("removing stale %s", tmp)
        tmp.unlink(missing_ok=True)
    snaps = snapshots_dir(index_dir)
    if not snaps.is_dir():
        return
    for path in snaps.iterdir():
        match = _SNAP.match(path.name)
        uncommitted = match is not None and current is not None and int(match.group(1)) > current
        if path.name.startswith(".tmp-") or uncommitted:
            log.warning("removing stale %s left by an interrupted save", path)
            shutil.rmtree(path, ignore_errors=True)


def write_snapshot(
    index_dir: Path, manifest: Manifest, write_files: Callable[[Path], None], keep: int = KEEP_SNAPSHOTS
) -> Path:
    """Write ``manifest.version`` durably and make it current. ``write_files(dir)`` writes the data files.

    The caller is the gallery's writer. On failure the temporary directory is removed (a full disk gets its
    space back) and ``CURRENT`` still names the previous snapshot, unless the failure came after ``CURRENT``
    was replaced, which leaves the new snapshot current and complete."""
    snaps = snapshots_dir(index_dir)
    snaps.mkdir(parents=True, exist_ok=True)
    final = snaps / snapshot_name(manifest.version)
    if final.exists() and read_current(index_dir) == manifest.version:
        # Committed already by an earlier attempt that failed after CURRENT was replaced (a failing fsync
        # of the folder): the same version holds the same changes, and it is complete (renamed in whole).
        log.warning("%s is current already: not writing it again", final)
        return final
    tmp = snaps / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        _write_aside(tmp, manifest, write_files)
        if final.exists():  # an uncommitted leftover of the same number (never the current one: see above)
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_path(snaps)
    _write_current(index_dir, manifest.version)
    _prune(snaps, manifest.version, keep)
    return final


def _write_aside(tmp: Path, manifest: Manifest, write_files: Callable[[Path], None]) -> None:
    write_files(tmp)
    checksums = {}
    for path in sorted(tmp.iterdir()):  # index.faiss, metadata.sqlite, and rerank.sq8 where a base has one
        fsync_path(path)
        checksums[path.name] = sha256_file(path)
    manifest.checksums = checksums
    manifest.saved_at = time.time()
    with open(tmp / MANIFEST_FILE, "w") as f:
        json.dump(asdict(manifest), f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    fsync_path(tmp)


def _prune(snaps: Path, current: int, keep: int) -> None:
    versions = sorted(int(m.group(1)) for p in snaps.iterdir() if (m := _SNAP.match(p.name)))
    for v in versions:
        if v <= current - keep:
            shutil.rmtree(snaps / snapshot_name(v), ignore_errors=True)


def read_manifest(snapshot: Path) -> Manifest:
    path = snapshot / MANIFEST_FILE
    try:
        data = json.loads(path.read_text())
        manifest = Manifest.from_dict(data)
    except FileNotFoundError as exc:
        raise IndexCorruptError(
            f"Snapshot {snapshot} has no manifest. Rebuild the index with `imgsim index build`."
        ) from exc
    except (ValueError, TypeError) as exc:
        raise IndexCorruptError(
            f"Manifest {path} is damaged ({exc}). Rebuild the index with `imgsim index build`."
        ) from exc
    if manifest.format_version not in READABLE_FORMATS:
        raise IndexCorruptError(
            f"Index {snapshot} has format {manifest.format_version}; this version reads "
            f"{' and '.join(map(str, READABLE_FORMATS))}. "
            "Rebuild the index with `imgsim index build`."
        )
    return manifest


def verify_checksums(snapshot: Path, manifest: Manifest) -> None:
    for name in dict.fromkeys([INDEX_FILE, META_FILE, *manifest.checksums]):
        path = snapshot / name
        expected = manifest.checksums.get(name)
        if not path.is_file():
            raise IndexCorruptError(f"{path} is missing. Rebuild the index with `imgsim index build`.")
        if expected is None or sha256_file(path) != expected:
            raise IndexCorruptError(
                f"{path} is damaged (sha256 differs from the manifest). "
                "Rebuild the index with `imgsim index build` (or point CURRENT at an older snapshot)."
            )
