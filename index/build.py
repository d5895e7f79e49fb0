"""Build an index from a folder-per-class gallery, bring it up to date, add files: what the CLI wraps.

Files are hashed first (sha256), so identical content is embedded and stored once, and ``update`` embeds
only what is new or changed. Unreadable files are skipped and reported, never fatal.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image
from tqdm import tqdm

from index import factory as fx
from index.backend import recorded_precision
from index.gallery import GalleryIndex
from index.records import NewItem
from model.core.checkpoint import Checkpoint
from model.core.device import resolve_device
from model.core.images import is_image_file
from model.data.galleries import scan_gallery
from model.inference.embedder import Embedder
from model.inference.engines import precision_for_gallery

if TYPE_CHECKING:  # index.ray_embed imports Ray, an optional extra: only when --ray is given
    from index.ray_embed import RayOptions

log = logging.getLogger(__name__)
_EXIF_ORIENTATION, _ROTATED = 0x0112, {5, 6, 7, 8}


@dataclass
class BuildReport:
    index_dir: Path
    count: int
    factory: str
    seconds: float
    version: int
    duplicates: int = 0
    skipped: dict[str, str] = field(default_factory=dict)  # path -> reason

    def summary(self) -> str:
        lines = [
            f"indexed {self.count} images into {self.index_dir} (version {self.version}, {self.factory}) "
            f"in {self.seconds:.1f} s; {self.duplicates} duplicates, {len(self.skipped)} skipped"
        ]
        lines += [f"  skipped {p}: {why}" for p, why in self.skipped.items()]
        return "\n".join(lines)


@dataclass
class UpdateReport:
    index_dir: Path
    added: int
    removed: int
    unchanged: int
    seconds: float
    version: int
    duplicates: int = 0
    skipped: dict[str, str] = field(default_factory=dict)
    ids: list[int] = field(default_factory=list)  # ids of the files given, in order (add_files)

    def summary(self) -> str:
        lines = [
            f"{self.index_dir} version {self.version}: {self.added} added, {self.removed} removed, "
            f"{self.unchanged} unchanged, {self.duplicates} duplicates, {len(self.skipped)} skipped "
            f"in {self.seconds:.1f} s"
        ]
        lines += [f"  skipped {p}: {why}" for p, why in self.skipped.items()]
        return "\n".join(lines)


def make_embedder(
    checkpoint: Checkpoint | str | Path | Embedder,
    device: str = "auto",
    engine: str = "auto",
    precision: str = "auto",
    index_dir: str | Path | None = None,
) -> Embedder:
    """The embedder for ``checkpoint``; with ``index_dir``, precision ``auto`` follows that gallery's."""
    if isinstance(checkpoint, Embedder):
        return checkpoint
    if precision == "auto" and index_dir is not None:
        precision = precision_for_gallery(recorded_precision(index_dir), resolve_device(device))
    return Embedder(checkpoint, device=device, engine=engine, precision=precision)


def _open(index_dir: str | Path, embedder: Embedder) -> GalleryIndex:
    """The gallery, refused unless this embedder's model, dimension and precision made it."""
    return GalleryIndex.open(
        index_dir, model_hash=embedder.checkpoint.hash, dim=embedder.dim, precision=embedder.precision
    )


def checkpoint_path(embedder: Embedder) -> str | None:
    path = embedder.checkpoint.path
    return str(Path(path).resolve()) if path else None


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def image_size(path: Path) -> tuple[int, int]:
    """Width and height as displayed (EXIF rotation applied), read from the header only."""
    with Image.open(path) as im:
        w, h = im.size
        return (h, w) if im.getexif().get(_EXIF_ORIENTATION) in _ROTATED else (w, h)


def embed_new(
    embedder: Embedder,
    gi: GalleryIndex | None,
    files: Sequence[tuple[Path, str, str]],
    *,
    batch_size: int = 64,
    num_workers: int = 2,
    progress: bool = True,
) -> tuple[np.ndarray, list[NewItem], dict[str, str], int]:
    """Hash ``(absolute, stored path, label)`` files, drop known or repeated content, embed the rest.

    Returns vectors, items, skipped (stored path -> reason) and the number of duplicates."""
    seen: set[str] = set()
    todo: list[tuple[Path, str, str, str]] = []
    skipped: dict[str, str] = {}
    duplicates = 0
    for absolute, stored, label in tqdm(files, desc="hashing", unit="file", disable=not progress):
        try:
            sha = file_sha256(absolute)
        except OSError as exc:
            skipped[stored] = f"{type(exc).__name__}: {exc}"
            continue
        if sha in seen or (gi is not None and gi.id_for_sha(sha) is not None):
            duplicates += 1
            continue
        seen.add(sha)
        todo.append((absolute, stored, label, sha))
    result = embedder.embed_files(
        [t[0] for t in todo], batch_size=batch_size, num_workers=num_workers, progress=progress
    )
    skipped.update({todo[i][1]: reason for i, reason in result.failures.items()})
    items = []
    for i in result.ok:
        absolute, stored, label, sha = todo[i]
        width, height = image_size(absolute)
        items.append(NewItem(stored, label, sha, width, height))
    return result.embeddings, items, skipped, duplicates


def build_gallery_index(
    checkpoint: Checkpoint | str | Path | Embedder,
    gallery_dir: str | Path,
    out_dir: str | Path,
    *,
    factory: str | None = None,
    batch_size: int = 64,
    num_workers: int = 2,
    device: str = "auto",
    progress: bool = True,
    precision: str = "auto",
    ray: RayOptions | None = None,
) -> BuildReport:
    """Embed every photo of ``gallery_dir`` into a new gallery; with ``ray``, on a Ray cluster (resumable)."""
    if ray is not None:
        from index.ray_build import ray_build

        embedder = make_embedder(checkpoint, device, precision=precision)
        built = ray_build(embedder, gallery_dir, out_dir, ray, factory=factory, device=device, progress=progress)
        log.info("%s", built.summary())
        return built
    start = time.perf_counter()
    out_dir = Path(out_dir)
    if (out_dir / "CURRENT").exists():
        raise ValueError(
            f"{out_dir} already holds an index. Add --replace to build a new one in its place, use "
            "`imgsim index update` to embed only new photos, or choose another --index."
        )
    gallery = scan_gallery(gallery_dir)
    root = gallery.root.resolve()
    embedder = make_embedder(checkpoint, device, precision=precision)
    files = [(root / item.path, item.path, item.label) for item in gallery.items]
    vectors, items, skipped, duplicates = embed_new(
        embedder, None, files, batch_size=batch_size, num_workers=num_workers, progress=progress
    )
    if not items:
        raise ValueError(f"None of the {len(files)} images in {gallery_dir} could be read.")
    chosen = factory or fx.choose_factory(len(items), embedder.dim)
    need = fx.min_train_size(fx.make_index(chosen, embedder.dim)[0])
    if len(items) < need:
        raise ValueError(
            f"Index type {chosen} needs at least {need} images to train; the gallery has "
            f"{len(items)}. Use --factory IDMap2,Flat."
        )
    ckpt = embedder.checkpoint
    with GalleryIndex.create(
        out_dir,
        model_hash=ckpt.hash,
        backbone=ckpt.config.backbone,
        dim=embedder.dim,
        gallery_root=root,
        factory=chosen,
        checkpoint=checkpoint_path(embedder),
        precision=embedder.precision,
    ) as gi:
        gi.add(vectors, items)
        version = gi.compact()  # a built gallery is one base snapshot, with an empty log
        count, used = gi.count, gi.factory
    report = BuildReport(out_dir, count, used, time.perf_counter() - start, version, duplicates, skipped)
    log.info("%s", report.summary())
    return report


def update_gallery_index(
    checkpoint: Checkpoint | str | Path | Embedder,
    gallery_dir: str | Path,
    index_dir: str | Path,
    *,
    batch_size: int = 64,
    num_workers: int = 2,
    device: str = "auto",
    progress: bool = True,
    precision: str = "auto",
    ray: RayOptions | None = None,
) -> UpdateReport:
    """Embed files new or changed since the last update (by sha256), drop those that disappeared.

    Uploads kept under ``media/`` and files added from outside the gallery are left alone."""
    start = time.perf_counter()
    embedder = make_embedder(checkpoint, device, precision=precision, index_dir=index_dir)
    with _open(index_dir, embedder) as gi:
        embed = _embedding(embedder, batch_size, num_workers, device, progress, ray)
        return _update(gi, embedder, gallery_dir, start, embed, progress)


# Embeds ``(absolute, stored, label)`` files into an open gallery: ids added, skipped, duplicates.
EmbedInto = Callable[[GalleryIndex, Sequence[tuple[Path, str, str]]], tuple[list[int], dict[str, str], int]]


def _embedding(
    embedder: Embedder, batch_size: int, num_workers: int, device: str, progress: bool, ray: RayOptions | None
) -> EmbedInto:
    """How new files reach the gallery: embedded here then added at once, or on Ray a chunk at a time."""

    def here(gi: GalleryIndex, files: Sequence[tuple[Path, str, str]]) -> tuple[list[int], dict[str, str], int]:
        vectors, items, skipped, duplicates = embed_new(
            embedder, gi, files, batch_size=batch_size, num_workers=num_workers, progress=progress
        )
        return (gi.add(vectors, items) if items else []), skipped, duplicates

    def on_ray(gi: GalleryIndex, files: Sequence[tuple[Path, str, str]]) -> tuple[list[int], dict[str, str], int]:
        from index.ray_build import add_on_ray

        assert ray is not None
        tally = add_on_ray(gi, embedder, list(files), ray, device, progress)
        return tally.ids, tally.skipped, tally.duplicates

    return here if ray is None else on_ray


def _update(
    gi: GalleryIndex,
    embedder: Embedder,
    gallery_dir: str | Path,
    start: float,
    embed: EmbedInto,
    progress: bool,
) -> UpdateReport:
    gallery = scan_gallery(gallery_dir)
    root = gallery.root.resolve()
    if gi.gallery_root != root:
        if gi.gallery_root is not None:
            log.warning("gallery root moves from %s to %s", gi.gallery_root, root)
        gi.set_gallery_root(root)
    indexed = {  # gallery files only: uploads (media/) and files added from elsewhere (absolute) stay
        r.path: r for r in gi.all_records() if not r.path.startswith("media/") and not Path(r.path).is_absolute()
    }
    current: dict[str, tuple[str, str]] = {}
    for item in tqdm(gallery.items, desc="hashing", unit="file", disable=not progress):
        try:
            current[item.path] = (file_sha256(root / item.path), item.label)
        except OSError as exc:
            log.warning("cannot read %s: %s", item.path, exc)
    stale = [r.id for p, r in indexed.items() if current.get(p) != (r.sha256, r.label)]
    unchanged = len(indexed) - len(stale)
    removed = gi.remove(stale)
    dropped = set(removed)
    fresh = [(root / p, p, label) for p, (_, label) in current.items() if p not in indexed or indexed[p].id in dropped]
    ids, skipped, duplicates = embed(gi, fresh)
    report = UpdateReport(
        gi.index_dir,
        len(ids),
        len(removed),
        unchanged,
        time.perf_counter() - start,
        gi.version,
        duplicates,
        skipped,
    )
    log.info("%s", report.summary())
    return report


def collect_files(paths: Sequence[str | Path], label: str | None) -> list[tuple[Path, str]]:
    """``(file, label)`` for files and folders; without ``label`` a folder is read folder-per-class."""
    out: list[tuple[Path, str]] = []
    for raw in paths:
        path = Path(raw).resolve()
        if path.is_file():
            if label is None:
                raise ValueError(f"{raw} is a file: give its --label (a folder without --label is per-class).")
            out.append((path, label))
        elif path.is_dir():
            if label is None:
                gallery = scan_gallery(path)
                out += [(gallery.root.resolve() / i.path, i.label) for i in gallery.items]
            else:
                out += [(p, label) for p in sorted(path.rglob("*")) if is_image_file(p)]
        else:
            raise FileNotFoundError(f"{raw} does not exist.")
    return out


def add_files(
    checkpoint: Checkpoint | str | Path | Embedder,
    index_dir: str | Path,
    paths: Sequence[str | Path],
    *,
    label: str | None = None,
    batch_size: int = 64,
    num_workers: int = 2,
    device: str = "auto",
    progress: bool = True,
    precision: str = "auto",
    ray: RayOptions | None = None,
) -> UpdateReport:
    """Embed and add files (paths under the gallery root are stored relative to it, others absolute)."""
    start = time.perf_counter()
    embedder = make_embedder(checkpoint, device, precision=precision, index_dir=index_dir)
    embed = _embedding(embedder, batch_size, num_workers, device, progress, ray)
    with _open(index_dir, embedder) as gi:
        root = gi.gallery_root

        def stored(p: Path) -> str:
            return p.relative_to(root).as_posix() if root is not None and p.is_relative_to(root) else str(p)

        files = [(p, stored(p), lab) for p, lab in collect_files(paths, label)]
        ids, skipped, duplicates = embed(gi, files)
        version = gi.version
    return UpdateReport(Path(index_dir), len(ids), 0, 0, time.perf_counter() - start, version, duplicates, skipped, ids)
