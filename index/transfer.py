"""``imgsim index export`` / ``import``: a gallery as a portable folder, streamed a chunk at a time.

The folder: ``chunk-000000.npz``, ... (each: ids, vectors, labels, sha256s, paths, sizes, times added, as NumPy
arrays: no pickles), ``media/`` (copies of the service's uploads, whose paths are ``media/<name>``; photos of
the gallery folder are referred to by their path under ``gallery_root``) and ``manifest.json``, written last:
an export without it is unfinished. Memory is one chunk, on either side.

Import adds each chunk with one durable ``commit_add``; an item whose sha256 is already in the target keeps
its id and label there. So an import that was interrupted, started again, skips what it had done and goes on;
the target gives its own ids (FAISS numbers them in order; Milvus by time), the export keeps the source's.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from index.backend import Gallery, create_empty_gallery, gallery_exists, open_gallery
from index.records import ItemRecord, NewItem
from model.core.files import write_atomic

log = logging.getLogger(__name__)
FORMAT = "imgsim-gallery-export/1"
MANIFEST = "manifest.json"
CHUNK_ITEMS = 10_000  # 10 MB of 256-d vectors per chunk


@dataclass
class ExportReport:
    out: Path
    items: int
    chunks: int
    media: int
    missing_media: list[int] = field(default_factory=list)  # ids whose uploaded image file was gone


@dataclass
class ImportReport:
    index: str
    added: int
    already_there: int
    chunks: int
    version: int


def _chunks(records: Iterator[ItemRecord], size: int) -> Iterator[list[ItemRecord]]:
    while chunk := list(islice(records, size)):
        yield chunk


def export_gallery(gallery: Gallery, out: str | Path, *, chunk_items: int = CHUNK_ITEMS) -> ExportReport:
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty: export into a new folder.")
    (out / "media").mkdir(parents=True, exist_ok=True)
    report = ExportReport(out, 0, 0, 0)
    names: list[dict[str, Any]] = []
    for chunk in _chunks(gallery.all_records(), chunk_items):
        ids = [r.id for r in chunk]
        arrays: dict[str, np.ndarray] = {
            "id": np.asarray(ids, dtype=np.int64),
            "vector": gallery.vectors(ids).astype(np.float32),
            "label": np.asarray([r.label for r in chunk], dtype=str),
            "sha256": np.asarray([r.sha256 for r in chunk], dtype=str),
            "path": np.asarray([r.path for r in chunk], dtype=str),
            "width": np.asarray([r.width for r in chunk], dtype=np.int32),
            "height": np.asarray([r.height for r in chunk], dtype=np.int32),
            "added_at": np.asarray([r.added_at for r in chunk], dtype=np.float64),
        }
        for record in chunk:
            if record.path.startswith("media/"):
                source = gallery.image_path(record.id)
                if source is None or not source.is_file():
                    report.missing_media.append(record.id)
                    continue
                shutil.copyfile(source, out / record.path)
                report.media += 1
        name = f"chunk-{report.chunks:06d}.npz"
        tmp = out / f".{name}.tmp"
        with tmp.open("wb") as f:
            np.savez(f, **arrays)  # type: ignore[arg-type]  # numpy types **kwds as allow_pickle too
        os.replace(tmp, out / name)
        names.append({"file": name, "items": len(chunk)})
        report.items += len(chunk)
        report.chunks += 1
    manifest = {
        "format": FORMAT,
        "model_hash": gallery.model_hash,
        "backbone": gallery.backbone,
        "dim": gallery.dim,
        "precision": gallery.precision,
        "checkpoint": gallery.checkpoint,
        "gallery_root": str(gallery.gallery_root) if gallery.gallery_root else None,
        "source_version": gallery.version,
        "items": report.items,
        "chunks": names,
        "exported_at": time.time(),
    }
    write_atomic(out / MANIFEST, json.dumps(manifest, indent=2).encode())
    return report


def read_manifest(src: Path) -> dict[str, Any]:
    path = src / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{src} holds no finished export ({MANIFEST} is missing): export again.")
    manifest: dict[str, Any] = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path} is not an imgsim gallery export ({FORMAT}).")
    return manifest


def import_gallery(
    src: str | Path,
    location: str | Path,
    *,
    media_dir: str | Path | None = None,
    on_chunk: Callable[[int, int], None] | None = None,
) -> ImportReport:
    """Add the export at ``src`` to the gallery at ``location`` (created with the export's model when there is
    none; one of another model is refused). ``on_chunk(done, total)`` is called after each durable chunk."""
    src = Path(src)
    manifest = read_manifest(src)
    gallery = _target(manifest, location, media_dir)
    report = ImportReport(str(location), 0, 0, 0, gallery.version)
    try:
        for entry in manifest["chunks"]:
            with np.load(src / entry["file"], allow_pickle=False) as data:
                arrays = {key: data[key] for key in data.files}
            items = [
                NewItem(str(path), str(label), str(sha), int(w), int(h))
                for path, label, sha, w, h in zip(
                    arrays["path"], arrays["label"], arrays["sha256"], arrays["width"], arrays["height"], strict=True
                )
            ]
            for item in items:  # the image before the item that points to it (as the service does)
                if item.path.startswith("media/"):
                    target = gallery.media_dir / item.path.removeprefix("media/")
                    if not target.exists() and (src / item.path).is_file():
                        shutil.copyfile(src / item.path, target)
            done = gallery.commit_add(arrays["vector"], items)
            report.added += len(done.created)
            report.already_there += len(items) - len(done.created)
            report.chunks += 1
            if on_chunk is not None:
                on_chunk(report.chunks, len(manifest["chunks"]))
        report.version = gallery.version
    finally:
        gallery.close()
    return report


def _target(manifest: dict[str, Any], location: str | Path, media_dir: str | Path | None) -> Gallery:
    precision = manifest.get("precision") or "fp32"  # exports made before precision was recorded: float
    if gallery_exists(location):
        return open_gallery(
            location,
            model_hash=manifest["model_hash"],
            dim=int(manifest["dim"]),
            precision=precision,
            media_dir=media_dir,
        )
    log.info("creating %s for the import", location)
    return create_empty_gallery(
        location,
        model_hash=manifest["model_hash"],
        backbone=manifest["backbone"],
        dim=int(manifest["dim"]),
        gallery_root=manifest.get("gallery_root"),
        checkpoint=manifest.get("checkpoint"),
        precision=precision,
        media_dir=media_dir,
    )
