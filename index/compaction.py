"""Compaction: fold the sealed deltas into the next base snapshot, so the log and the delta stay small.

The gallery seals its deltas (new writes go to a fresh one) and hands this module a :class:`View` of the
base plus the sealed deltas. :func:`build_base` makes the next base from it, without touching what is
being served: the FAISS index is cloned, the removed ids taken out and the added vectors put in (an
approximate index is trained here only if it never was: its first base); the metadata database is a copy
of the base's with the changes applied in one transaction. Both go through the atomic snapshot writer
(checksums, fsync, rename, ``CURRENT``). Swapping it in and deleting the log it covers is the gallery's job.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from index import factory as fx
from index import rerank
from index.base import Base, read_mapped
from index.errors import IndexCorruptError, StorageFullError, StorageUnavailableError, storage_error
from index.metadata import write_metadata, write_next_metadata
from index.rerank import RERANK_FILE
from index.snapshot import INDEX_FILE, META_FILE, Manifest, write_snapshot
from index.view import View

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CompactionPolicy:
    """When the delta is folded into a new base (index/gallery.py checks after each committed batch)."""

    max_changes: int = 20_000  # adds + removals + relabels since the base (memory ~1.2 KB per 256-d add)
    max_age_s: float = 3600.0  # or the oldest change waiting this long (checked when a change comes in)
    retry_after_s: float = 60.0  # after a failed compaction (a full disk), wait before trying again
    media_grace_s: float = 600.0  # media files younger than this are never swept (an add may be under way)
    background: bool = True  # False: only compact() and close(compact=True) compact (tests, bulk tools)


def due(changes: int, first_change: float | None, policy: CompactionPolicy) -> bool:
    if changes >= policy.max_changes:
        return True
    return first_change is not None and time.monotonic() - first_change >= policy.max_age_s


def write_faiss(index: faiss.Index, path: Path) -> None:
    """``faiss.write_index`` with its failures as storage errors (FAISS reports them as RuntimeError)."""
    try:
        faiss.write_index(index, str(path))
    except RuntimeError as exc:
        text = str(exc)
        full = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
        code = next((e for e in full if os.strerror(e) in text), errno.EIO)
        raise storage_error(OSError(code, text.splitlines()[-1]), str(path)) from exc


def _added(sealed: View) -> tuple[np.ndarray, np.ndarray]:
    """The ids and vectors the sealed deltas add (those still live)."""
    rows = sealed.delta_rows(None)
    ids = np.concatenate([dv.ids[r] for dv, r in zip(sealed.deltas, rows, strict=True)])
    vectors = np.concatenate([dv.vectors[r] for dv, r in zip(sealed.deltas, rows, strict=True)])
    return ids, vectors


def _next_index(sealed: View, ids: np.ndarray, vectors: np.ndarray) -> faiss.Index:
    base = sealed.base
    # A private copy to change: the served base is memory-mapped and shared with the searches.
    index = faiss.read_index(str(base.folder / INDEX_FILE))
    if not index.is_trained:
        need = fx.min_train_size(index)
        if len(vectors) < need:
            raise ValueError(
                f"Index type {base.manifest.factory} needs {need} vectors to train; it has {len(vectors)}."
            )
        index.train(fx.training_sample(vectors, need))
    removed = sealed.deleted_base_ids()
    if len(removed):
        index = fx.remove_ids(index, removed, base.meta.all_ids)
    if len(ids):
        index.add_with_ids(vectors, ids)
    fx.apply_search_params(index, sealed.search_params)
    if index.ntotal != sealed.count:
        raise IndexCorruptError(
            f"Compaction made {index.ntotal} vectors for {sealed.count} items; nothing was written."
        )
    return index


def build_base(index_dir: Path, sealed: View) -> Base:
    """Write the next base (``sealed.version``) and make it current; returns it, loaded."""
    started = time.perf_counter()
    base, settings = sealed.base, sealed.settings
    new_ids, new_vectors = _added(sealed)
    index = _next_index(sealed, new_ids, new_vectors)
    relabels = {i: lab for i, lab in sealed.relabels().items() if i < base.next_id and not sealed.deleted(i)}
    found = sealed.get_many([rec.id for dv in sealed.deltas for rec in dv.records()])
    added = sorted(found.values(), key=lambda r: r.id)  # live, with their last label
    counts = sealed.labels()
    m = base.manifest
    manifest = Manifest(
        version=sealed.version,
        model_hash=m.model_hash,
        backbone=m.backbone,
        dim=m.dim,
        count=sealed.count,
        factory=m.factory,
        created=m.created,
        next_id=sealed.next_id,
        gallery_root=settings.get("gallery_root"),
        checkpoint=settings.get("checkpoint"),
        search_params=dict(sealed.search_params) or fx.current_search_params(index),
        rerank=m.rerank,
        precision=m.precision,
    )

    def write_files(folder: Path) -> None:
        write_faiss(index, folder / INDEX_FILE)
        try:
            if base.count == 0:  # nothing to copy (and a format 1 base of nothing may lack tables)
                write_metadata(added, folder / META_FILE)
            else:
                removed = sealed.deleted_base_ids().tolist()
                write_next_metadata(base.meta.path, folder / META_FILE, removed, relabels, added, counts)
            if base.rerank is not None:
                rerank.write_next(base.rerank.path, folder / RERANK_FILE, new_ids, new_vectors, sealed.next_id)
            elif m.rerank and len(new_ids):  # the first base of a re-ranked gallery
                sample = fx.training_sample(new_vectors, 256)
                rerank.write_new(folder / RERANK_FILE, sample, new_ids, new_vectors, sealed.next_id)
        except OSError as exc:
            raise storage_error(exc, str(folder / META_FILE)) from exc
        except sqlite3.Error as exc:  # SQLite reports a full disk as "database or disk is full"
            code = errno.ENOSPC if "full" in str(exc) else errno.EIO
            raise storage_error(OSError(code, str(exc)), str(folder / META_FILE)) from exc

    try:
        final = write_snapshot(index_dir, manifest, write_files)
    except (StorageFullError, StorageUnavailableError):
        raise
    except OSError as exc:
        raise storage_error(exc, f"the snapshot of version {manifest.version}") from exc
    # Serve the file just written, mapped, like a base loaded at open: the built copy goes with this frame.
    mapped = read_mapped(final / INDEX_FILE)
    fx.apply_search_params(mapped, manifest.search_params)
    log.info(
        "compacted %s to version %d: %d items, %d changes folded in %.1f s",
        index_dir,
        manifest.version,
        manifest.count,
        sealed.changes,
        time.perf_counter() - started,
    )
    return Base(final, manifest, mapped, label_counts=counts)
