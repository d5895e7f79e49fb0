"""The gallery as the service and the CLI use it, whatever stores it, and the one place that picks the store.

Two backends implement :class:`Gallery`: the embedded FAISS gallery (:class:`~index.gallery.GalleryIndex`, a
folder: the default, needs nothing) and Milvus (:class:`~index.milvus.MilvusGallery`, the ``scale`` extra).
The location says which (:func:`parse_location`):

- a folder (``indexes/default``): FAISS;
- ``milvus://HOST:PORT/COLLECTION``: a Milvus server or cluster;
- ``milvus-lite:///path/file.db`` or any ``*.db`` path: Milvus Lite, an embedded Milvus engine in one file
  (tests and small setups), collection ``gallery``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from index.compaction import CompactionPolicy
from index.records import Hit, ItemRecord, NewItem
from index.working import Committed


class Gallery(Protocol):
    """What every gallery backend gives. Changes are durable and visible to every reader when they return.

    Ids are stable and never reused; ``version`` grows with every change; a sha256 already in the gallery keeps
    its id on a second add (``commit_add``'s ``created`` says which were new)."""

    @property
    def version(self) -> int: ...
    @property
    def count(self) -> int: ...
    @property
    def dim(self) -> int: ...
    @property
    def model_hash(self) -> str: ...
    @property
    def precision(self) -> str:
        """The numerics its vectors were embedded in (int8 and float vectors never share a gallery)."""
        ...
    @property
    def backbone(self) -> str: ...
    @property
    def checkpoint(self) -> str | None: ...
    @property
    def gallery_root(self) -> Path | None: ...
    @property
    def media_dir(self) -> Path:
        """Where the service stores uploaded images (items whose path is ``media/<name>``)."""
        ...

    @property
    def searched_in_memory(self) -> bool:
        """True when a search is a local computation (cheap enough to run on the event loop when small)."""
        ...

    def search(self, vectors: np.ndarray, k: int, label: str | None = None) -> list[list[Hit]]: ...
    def get(self, id: int) -> ItemRecord | None: ...
    def items(self, offset: int = 0, limit: int = 50, label: str | None = None) -> tuple[list[ItemRecord], int]: ...
    def all_records(self) -> Iterator[ItemRecord]: ...
    def id_for_sha(self, sha256: str) -> int | None: ...
    def vector(self, id: int) -> np.ndarray | None: ...
    def vectors(self, ids: Sequence[int]) -> np.ndarray: ...
    def image_path(self, id: int) -> Path | None: ...
    def labels(self) -> dict[str, int]: ...
    def info(self) -> dict[str, Any]: ...

    def add(self, vectors: np.ndarray, items: Sequence[NewItem]) -> list[int]: ...
    def commit_add(self, vectors: np.ndarray, items: Sequence[NewItem]) -> Committed: ...
    def remove(self, ids: Sequence[int]) -> list[int]: ...
    def commit_remove(self, ids: Sequence[int]) -> Committed: ...
    def relabel(self, id: int, label: str) -> Committed: ...
    def set_gallery_root(self, root: str | Path) -> None: ...

    def ensure_writer(self) -> None: ...
    def refresh(self) -> bool: ...
    def compact(self) -> int: ...
    def close(self, compact: bool = False) -> None: ...
    def __enter__(self) -> Gallery: ...
    def __exit__(self, *exc: object) -> None: ...


@dataclass(frozen=True)
class Location:
    kind: str  # "faiss", "milvus" (a server) or "milvus-lite" (a local file)
    path: Path | None = None  # the folder (faiss) or the .db file (milvus-lite)
    uri: str | None = None  # http://HOST:PORT (milvus)
    collection: str = "gallery"

    def __str__(self) -> str:
        if self.kind == "milvus":
            return f"milvus://{(self.uri or '').removeprefix('http://')}/{self.collection}"
        return f"milvus-lite://{self.path}" if self.kind == "milvus-lite" else str(self.path)


# A settings ``Path`` folds ``milvus://h:p/c`` into ``milvus:/h:p/c``: both spellings are read.
_SCHEME = re.compile(r"^(milvus|milvus-lite):/+(.*)$")
_COLLECTION = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,200}$")


def parse_location(location: str | Path) -> Location:
    text = str(location)
    match = _SCHEME.match(text)
    if match is None:
        path = Path(text)
        return Location("milvus-lite", path=path) if path.suffix == ".db" else Location("faiss", path=path)
    scheme, rest = match.groups()
    if scheme == "milvus-lite":
        return Location("milvus-lite", path=Path("/" + rest if text.startswith("milvus-lite:///") else rest))
    host, _, collection = rest.partition("/")
    collection = collection.strip("/") or "gallery"
    if not host or not _COLLECTION.match(collection):
        raise ValueError(
            f"{text!r} is not a Milvus location: use milvus://HOST:PORT/COLLECTION (a collection name is letters, "
            "digits and underscores, not starting with a digit)."
        )
    return Location("milvus", uri=f"http://{host if ':' in host else host + ':19530'}", collection=collection)


def gallery_exists(location: str | Path) -> bool:
    loc = parse_location(location)
    if loc.kind == "faiss":
        return (Path(str(loc.path)) / "CURRENT").is_file()
    from index.milvus import MilvusGallery

    return MilvusGallery.exists(loc)


def open_gallery(
    location: str | Path,
    *,
    model_hash: str | None = None,
    dim: int | None = None,
    precision: str | None = None,
    writer: bool = False,
    policy: CompactionPolicy | None = None,
    media_dir: str | Path | None = None,
) -> Gallery:
    """The gallery at ``location``; one of another model (hash or dimension) or of other numerics
    (``precision``: int8 vs float) is refused with :class:`~index.errors.IndexMismatchError`. ``policy`` and
    ``writer`` concern the FAISS gallery only; ``media_dir`` the Milvus one (default: beside the .db file, or
    ``media/<collection>``)."""
    loc = parse_location(location)
    if loc.kind == "faiss":
        from index.gallery import GalleryIndex

        return GalleryIndex.open(
            Path(str(loc.path)), model_hash=model_hash, dim=dim, precision=precision, writer=writer, policy=policy
        )
    from index.milvus import MilvusGallery

    return MilvusGallery.open(loc, model_hash=model_hash, dim=dim, precision=precision, media_dir=media_dir)


def create_empty_gallery(
    location: str | Path,
    *,
    model_hash: str,
    backbone: str,
    dim: int,
    gallery_root: str | Path | None = None,
    checkpoint: str | Path | None = None,
    precision: str = "fp32",
    policy: CompactionPolicy | None = None,
    media_dir: str | Path | None = None,
) -> Gallery:
    """A new, empty gallery at ``location`` (refused when one is there)."""
    loc = parse_location(location)
    if loc.kind == "faiss":
        from index.gallery import GalleryIndex

        return GalleryIndex.create(
            Path(str(loc.path)),
            model_hash=model_hash,
            backbone=backbone,
            dim=dim,
            gallery_root=gallery_root,
            checkpoint=checkpoint,
            precision=precision,
            policy=policy,
        )
    from index.milvus import MilvusGallery

    return MilvusGallery.create(
        loc,
        model_hash=model_hash,
        backbone=backbone,
        dim=dim,
        gallery_root=gallery_root,
        checkpoint=checkpoint,
        precision=precision,
        media_dir=media_dir,
    )


def recorded_precision(location: str | Path) -> str | None:
    """The precision the gallery at ``location`` was embedded in; None when there is none yet (or it cannot be
    read: opening it will say why)."""
    loc = parse_location(location)
    if loc.kind == "faiss":
        from index.gallery import recorded_precision as in_folder

        return in_folder(Path(str(loc.path)))
    if not gallery_exists(location):
        return None
    with open_gallery(location) as gallery:
        return gallery.precision
