"""``--ray``: build, update or add to a gallery with the embedding done on a Ray cluster (``index/ray_embed.py``).

This process stays the gallery's one writer: each chunk the actors finish is added with one durable write,
so a build that stops (a lost node, a restart, Ctrl-C) keeps what it committed. A build writes
``INDEX_DIR/ray-build.json`` while it runs; run the same command again and it resumes: photos whose sha256
is already in the gallery are skipped before they are embedded. A progress bar shows images/s and the ETA.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from index import factory as fx
from index import ray_embed
from index.build import BuildReport, checkpoint_path
from index.compaction import CompactionPolicy
from index.gallery import GalleryIndex
from index.ray_embed import ERROR, KNOWN, NEW, RayOptions
from index.records import NewItem
from model.inference.embedder import Embedder

FOLD_MIN, FOLD_MAX = 1_000_000, 4_000_000  # photos in a build's log before it is folded into the base
BUILDING = CompactionPolicy(background=False)  # a build compacts when fold_due says, and at its end
MARKER = "ray-build.json"  # present while a --ray build is unfinished: the same command resumes it


@dataclass
class Tally:
    """What the chunks brought: photos embedded in this run, already in the gallery, repeated, unreadable."""

    embedded: int = 0
    known: int = 0
    duplicates: int = 0
    ids: list[int] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


@dataclass
class RayBuildReport(BuildReport):
    embedded: int = 0  # photos embedded by this run (a resumed build embeds only what was missing)
    resumed: int = 0  # photos already in the gallery when this run started

    def summary(self) -> str:
        head, *rest = super().summary().split("\n")
        resumed = f", resumed with {self.resumed} already indexed" if self.resumed else ""
        return "\n".join([f"{head}; {self.embedded} embedded on Ray{resumed}", *rest])


def commit_chunk(gi: GalleryIndex, chunk: dict[str, np.ndarray], tally: Tally) -> None:
    """Add a chunk's embedded rows with one durable write; note its known and unreadable rows."""
    status = chunk["status"]
    for i in np.flatnonzero(status == ERROR):
        tally.skipped[str(chunk["stored"][i])] = str(chunk["reason"][i])
    tally.known += int((status == KNOWN).sum())
    new = np.flatnonzero(status == NEW)
    if not len(new):
        return
    items = [
        NewItem(str(stored), str(label), str(sha), int(w), int(h))
        for stored, label, sha, w, h in zip(
            *(chunk[key][new] for key in ("stored", "label", "sha256", "width", "height")), strict=True
        )
    ]
    done = gi.commit_add(chunk["vector"][new], items)
    tally.embedded += len(new)
    tally.duplicates += len(new) - len(done.created)  # content repeated in this run keeps its first id
    tally.ids += done.ids


def stream_into(
    gi: GalleryIndex, chunks: Iterable[dict[str, np.ndarray]], total: int, progress: bool, fold: bool = False
) -> Tally:
    """Commit the chunks as they come, with the bar; ``fold``: compact as :func:`fold_due` says (a build)."""
    tally = Tally()
    with tqdm(total=total, desc="embedding on Ray", unit="img", disable=not progress, smoothing=0.1) as bar:
        for chunk in chunks:
            commit_chunk(gi, chunk, tally)
            bar.update(len(chunk["status"]))
            if fold and fold_due(gi.pending, gi.count - gi.pending):
                gi.compact()
    return tally


def fold_due(pending: int, in_base: int) -> bool:
    """A build folds its log into the base when the log holds as many photos as the base (at least
    ``FOLD_MIN``, at most ``FOLD_MAX``): O(log n) rewrites of the base up to ``FOLD_MAX`` photos, then one per
    ``FOLD_MAX`` (the service's every-20,000-changes policy would rewrite a growing base thousands of times),
    and the in-memory log stays under ~1.2 KB x ``FOLD_MAX``; a resumed build replays at most that much."""
    return pending >= min(FOLD_MAX, max(FOLD_MIN, in_base))


def ray_build(
    embedder: Embedder,
    gallery_dir: str | Path,
    out_dir: str | Path,
    options: RayOptions,
    *,
    factory: str | None = None,
    device: str = "auto",
    progress: bool = True,
) -> RayBuildReport:
    """``imgsim index build --ray``: a new gallery, or the rest of an interrupted one (``MARKER``)."""
    start = time.perf_counter()
    out_dir, root = Path(out_dir), Path(gallery_dir).resolve()
    checkpoint = _checkpoint_file(embedder)
    marker, exists = out_dir / MARKER, (out_dir / "CURRENT").exists()
    if exists and not marker.is_file():
        raise ValueError(
            f"{out_dir} already holds an index. Add --replace to build a new one in its place, use "
            "`imgsim index update` to embed only new photos, or choose another --index."
        )
    ray_embed.connect(options)
    files = ray_embed.list_gallery(root)
    listed = files.count()
    if not listed:
        raise ValueError(f"No images found in {root}. A gallery has one folder per class with images inside.")
    if exists:  # an interrupted build: resume it
        gi = GalleryIndex.open(
            out_dir,
            model_hash=embedder.checkpoint.hash,
            dim=embedder.dim,
            precision=embedder.precision,
            writer=True,
            policy=BUILDING,
        )
    else:  # the marker first: a build stopped at any point after it is resumed, not refused
        out_dir.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps({"data": str(root), "checkpoint": checkpoint}))
        gi = _create(embedder, out_dir, root, factory or fx.choose_factory(listed, embedder.dim), checkpoint)
    with gi:
        resumed = gi.count
        known = ray_embed.known_digests(r.sha256 for r in gi.all_records())
        chunks = ray_embed.embed(files, checkpoint, known, options, device, embedder.precision)
        tally = stream_into(gi, chunks, listed, progress, fold=True)
        _check_trainable(gi, embedder.dim)
        version = gi.compact()  # a built gallery is one base snapshot, with an empty log
        marker.unlink()
        count, used = gi.count, gi.factory
    duplicates = listed - count - len(tally.skipped)  # files whose content another file brought first
    seconds = time.perf_counter() - start
    return RayBuildReport(out_dir, count, used, seconds, version, duplicates, tally.skipped, tally.embedded, resumed)


def add_on_ray(
    gi: GalleryIndex,
    embedder: Embedder,
    files: list[tuple[Path, str, str]],
    options: RayOptions,
    device: str = "auto",
    progress: bool = True,
) -> Tally:
    """Embed ``(absolute, stored, label)`` files on Ray into an open gallery (``index update|add --ray``);
    content already in the gallery is counted as a duplicate, like without Ray."""
    if not files:
        return Tally()
    ray_embed.connect(options)
    known = ray_embed.known_digests(r.sha256 for r in gi.all_records())
    listed = ray_embed.from_files(files)
    chunks = ray_embed.embed(listed, _checkpoint_file(embedder), known, options, device, embedder.precision)
    tally = stream_into(gi, chunks, len(files), progress)
    tally.duplicates += tally.known
    return tally


def _checkpoint_file(embedder: Embedder) -> str:
    path = checkpoint_path(embedder)
    if path is None:
        raise ValueError("--ray needs the checkpoint as a file that every Ray node can read (give --checkpoint).")
    return path


def _create(embedder: Embedder, out_dir: Path, root: Path, factory: str, checkpoint: str) -> GalleryIndex:
    ckpt = embedder.checkpoint
    return GalleryIndex.create(
        out_dir,
        model_hash=ckpt.hash,
        backbone=ckpt.config.backbone,
        dim=embedder.dim,
        gallery_root=root,
        factory=factory,
        checkpoint=checkpoint,
        precision=embedder.precision,
        policy=BUILDING,
    )


def _check_trainable(gi: GalleryIndex, dim: int) -> None:
    if not gi.count:
        raise ValueError(f"None of the images in {gi.gallery_root} could be read.")
    need = fx.min_train_size(fx.make_index(gi.factory, dim)[0])
    if gi.count < need:
        raise ValueError(
            f"Index type {gi.factory} needs at least {need} images to train; the gallery has {gi.count}. "
            "Use --factory IDMap2,Flat."
        )
