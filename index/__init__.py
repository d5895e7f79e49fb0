"""The gallery index: a durable, versioned FAISS index with runtime add and delete (issue 3).

The build functions import torch (through the embedder), so they load on first use: searching and
changing an index needs only FAISS and numpy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from index.errors import IndexConflictError, IndexCorruptError, IndexMismatchError
from index.factory import choose_factory
from index.gallery import GalleryIndex
from index.records import Hit, ItemRecord, NewItem

if TYPE_CHECKING:
    from index.build import BuildReport, UpdateReport, add_files, build_gallery_index, update_gallery_index

_LAZY = {"BuildReport", "UpdateReport", "add_files", "build_gallery_index", "update_gallery_index"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from index import build

        return getattr(build, name)
    raise AttributeError(f"module 'index' has no attribute {name!r}")


__all__ = [
    "BuildReport",
    "GalleryIndex",
    "Hit",
    "IndexConflictError",
    "IndexCorruptError",
    "IndexMismatchError",
    "ItemRecord",
    "NewItem",
    "UpdateReport",
    "add_files",
    "build_gallery_index",
    "choose_factory",
    "update_gallery_index",
]
