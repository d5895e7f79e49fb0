"""The gallery index: a durable, versioned FAISS gallery with runtime add, remove and relabel (issues 3, 12).

The build functions import torch (through the embedder), so they load on first use: searching and
changing an index needs only FAISS and numpy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from index.compaction import CompactionPolicy
from index.errors import (
    IndexConflictError,
    IndexCorruptError,
    IndexMismatchError,
    StorageError,
    StorageFullError,
    StorageUnavailableError,
)
from index.factory import choose_factory
from index.gallery import GalleryIndex
from index.records import Hit, ItemRecord, NewItem
from index.working import Committed

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
    "Committed",
    "CompactionPolicy",
    "GalleryIndex",
    "Hit",
    "IndexConflictError",
    "IndexCorruptError",
    "IndexMismatchError",
    "ItemRecord",
    "NewItem",
    "StorageError",
    "StorageFullError",
    "StorageUnavailableError",
    "UpdateReport",
    "add_files",
    "build_gallery_index",
    "choose_factory",
    "update_gallery_index",
]
