"""The gallery index: a durable, versioned FAISS index with runtime add and delete (issue 3)."""

from index.build import BuildReport, UpdateReport, add_files, build_gallery_index, update_gallery_index
from index.errors import IndexConflictError, IndexCorruptError, IndexMismatchError
from index.factory import choose_factory
from index.gallery import GalleryIndex
from index.records import Hit, ItemRecord, NewItem

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
