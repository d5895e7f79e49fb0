"""Errors a caller can act on: each message says what to rebuild or redo."""

from __future__ import annotations


class IndexMismatchError(ValueError):
    """The index was built by another model (content hash or embedding dimension differs)."""


class IndexCorruptError(ValueError):
    """A snapshot file is missing, truncated or fails its checksum."""


class IndexConflictError(ValueError):
    """Another process saved a newer snapshot since this one was loaded; saving would lose its changes."""
