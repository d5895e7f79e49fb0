"""Folder-per-class galleries and the seeded closed-set / open-set splits."""

from __future__ import annotations

import fnmatch
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from model.core.images import is_image_file

_WNID_PREFIX = re.compile(r"^n\d{8}-")


def class_name_from_folder(folder: str) -> str:
    """``n02085620-Chihuahua`` (Stanford Dogs) -> ``Chihuahua``; ``beagle`` -> ``beagle``."""
    return _WNID_PREFIX.sub("", folder)


@dataclass(frozen=True)
class Item:
    path: str  # relative to the gallery root, with forward slashes
    label: str


@dataclass
class Gallery:
    root: Path
    items: list[Item]

    @property
    def classes(self) -> list[str]:
        return sorted({item.label for item in self.items})

    def absolute(self, item: Item) -> Path:
        return self.root / item.path


def class_folders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def folder_items(root: Path, folder: Path) -> list[Item]:
    """The images of one class folder (any depth below it), sorted."""
    label = class_name_from_folder(folder.name)
    return [Item(p.relative_to(root).as_posix(), label) for p in sorted(folder.rglob("*")) if is_image_file(p)]


def folder_rows(row: dict[str, str], root: str) -> list[dict[str, str]]:
    """:func:`folder_items` of ``row["folder"]`` as rows of a distributed listing (index/ray_embed.py): a
    function of this light module, so that a Ray worker lists without importing torch."""
    found = folder_items(Path(root), Path(row["folder"]))
    return [{"path": f"{root}/{i.path}", "stored": i.path, "label": i.label} for i in found]


def scan_gallery(root: str | Path, min_per_class: int = 1) -> Gallery:
    """Every image under ``root/<class>/``, sorted, so the same folder always yields the same list."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"Gallery folder {root} does not exist.")
    items: list[Item] = []
    for folder in class_folders(root):
        found = folder_items(root, folder)
        if len(found) >= min_per_class:
            items.extend(found)
    if not items:
        raise ValueError(
            f"No images found in {root}. A gallery has one folder per class with .jpg/.png/.webp files inside."
        )
    return Gallery(root, items)


@dataclass
class Splits:
    """Which images train, which validate, which are held out. Stored in the checkpoint as plain lists."""

    seed: int
    train: list[Item] = field(default_factory=list)
    val: list[Item] = field(default_factory=list)  # held-out images of the training classes (closed set)
    val_open: list[Item] = field(default_factory=list)  # images of classes never trained on (open set)

    @property
    def train_classes(self) -> list[str]:
        return sorted({i.label for i in self.train})

    @property
    def open_classes(self) -> list[str]:
        return sorted({i.label for i in self.val_open})

    def to_dict(self) -> dict[str, object]:
        return {
            "seed": self.seed,
            **{
                name: [[i.path, i.label] for i in getattr(self, name)]
                for name in ("train", "val", "val_open")
            },
        }

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> Splits:
        def items(name: str) -> list[Item]:
            rows = data.get(name, [])
            assert isinstance(rows, list)
            return [Item(str(p), str(label)) for p, label in rows]

        seed = data["seed"]
        assert isinstance(seed, int)
        return cls(seed, items("train"), items("val"), items("val_open"))


def make_splits(
    items: Sequence[Item],
    *,
    seed: int = 0,
    val_fraction: float = 0.2,
    open_classes: Sequence[str] = (),
    num_open_classes: int = 0,
) -> Splits:
    """Closed set: ``val_fraction`` of every class's images held out. Open set: whole classes held out,
    named in ``open_classes`` or ``num_open_classes`` drawn with ``seed``."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}.")
    rng = random.Random(seed)
    classes = sorted({i.label for i in items})
    unknown = sorted(set(open_classes) - set(classes))
    if unknown:
        raise ValueError(f"Open-set classes {unknown} are not in the gallery. Classes: {classes}.")
    held_out = set(open_classes) or set(rng.sample(classes, num_open_classes) if num_open_classes else [])
    if len(held_out) >= len(classes):
        raise ValueError("At least one class must remain for training.")
    splits = Splits(seed)
    for label in classes:
        members = [i for i in items if i.label == label]
        if label in held_out:
            splits.val_open.extend(members)
            continue
        rng.shuffle(members)
        n_val = round(len(members) * val_fraction)
        splits.val.extend(sorted(members[:n_val], key=lambda i: i.path))
        splits.train.extend(sorted(members[n_val:], key=lambda i: i.path))
    return splits


def select_items(gallery: Gallery, spec: str) -> list[int]:
    """Rows of ``gallery.items`` named by ``spec``, in gallery order: the photos ``imgsim eval --queries`` queries
    with and ``imgsim train --exclude`` keeps out of training.

    ``spec`` is a file listing photos, one per line (relative to the gallery folder or absolute; blank lines
    and ``#`` comments ignored), or else a glob matched against each photo's path relative to the gallery
    folder (``*/ILSVRC2012_val_*``), or against its file name when the glob has no ``/`` (``ILSVRC2012_val_*``).
    Naming no photo, or listing one that is not in the gallery, is an error: a typo must not evaluate on
    nothing or train on everything.
    """
    listing = Path(spec)
    if listing.is_file():
        root = gallery.root.resolve()
        wanted = set()
        for line in listing.read_text().splitlines():
            entry = line.strip()
            if not entry or entry.startswith("#"):
                continue
            path = Path(entry)
            if path.is_absolute() and path.resolve().is_relative_to(root):
                path = path.resolve().relative_to(root)
            wanted.add(path.as_posix())
        rows = [k for k, item in enumerate(gallery.items) if item.path in wanted]
        missing = len(wanted) - len(rows)
        if missing:
            raise ValueError(f"{spec}: {missing} of the {len(wanted)} photos it lists are not in {gallery.root}.")
    else:
        name_only = "/" not in spec
        rows = [
            k
            for k, item in enumerate(gallery.items)
            if fnmatch.fnmatchcase(item.path.rsplit("/", 1)[-1] if name_only else item.path, spec)
        ]
    if not rows:
        raise ValueError(
            f"{spec!r} names none of the {len(gallery.items)} photos in {gallery.root}: give a file listing photos "
            "or a glob such as '*/ILSVRC2012_val_*'."
        )
    return rows


def gallery_fingerprint(gallery: Gallery) -> str:
    """sha256 over (path, label, size, mtime) of every item: changes whenever the gallery's files change."""
    import hashlib

    digest = hashlib.sha256()
    for item in gallery.items:
        stat = gallery.absolute(item).stat()
        digest.update(f"{item.path}\0{item.label}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()
