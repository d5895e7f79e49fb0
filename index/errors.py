"""Errors a caller can act on: each message says what to rebuild or redo."""

from __future__ import annotations

import errno


class IndexMismatchError(ValueError):
    """The index was built by another model (content hash or embedding dimension differs)."""


class IndexCorruptError(ValueError):
    """A snapshot or log file is missing, truncated or fails its checksum."""


class IndexConflictError(ValueError):
    """Another process (or another open ``GalleryIndex`` of this process) is writing this gallery."""


class StorageError(OSError):
    """A change could not be made durable; nothing of it was applied, in memory or on disk."""


class StorageFullError(StorageError):
    """The disk (or the file-size limit, or the quota) is full: free space, then retry."""


class StorageUnavailableError(StorageError):
    """The storage refused the write (read-only, I/O error, ...): fix the disk, then retry."""


_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def storage_error(exc: OSError, what: str) -> StorageError:
    """The typed error for a failed write of ``what`` (an ``OSError`` from the kernel)."""
    reason = exc.strerror or str(exc)
    if exc.errno in _FULL:
        return StorageFullError(exc.errno, f"No space left to write {what} ({reason}). Free disk space, then retry.")
    return StorageUnavailableError(
        exc.errno or errno.EIO, f"The storage refused to write {what} ({reason}). Check the disk, then retry."
    )
