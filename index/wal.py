"""The write-ahead log: append-only segment files of checksummed records, fsynced before a change counts.

Layout::

    INDEX_DIR/log/wal-0000000000000008.log     records of versions 8, 9, ... (the name: the first it may hold)

A segment starts with an 8-byte magic; each record is ``[u32 length][u32 crc32][payload]`` (little endian,
the CRC covers the length and the payload). :class:`LogWriter` appends a batch of records with one write
and one ``fdatasync``; if either fails it cuts the file back to where the batch began, so nothing of the
batch survives, and raises :class:`~index.errors.StorageFullError` or ``StorageUnavailableError``.

Reading (:func:`read_segment`) stops at the first record that is incomplete or fails its CRC: a power cut
in the middle of an append leaves such a tail, never acknowledged, since the fsync had not returned. Only
the writer cuts it off (:meth:`LogWriter.open`); a reader leaves the file as it is, since the writer may be
in the middle of that very append.
"""

from __future__ import annotations

import logging
import os
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from index.errors import IndexCorruptError, StorageError, storage_error
from model.core.files import fsync_path

log = logging.getLogger(__name__)

MAGIC = b"IMGSWAL1"
_HEADER = struct.Struct("<II")  # length, crc32(length bytes + payload)
MAX_RECORD = 1 << 30  # a length above this is garbage, not a record
_NAME = re.compile(r"^wal-(\d{16})\.log$")
# Readers in other processes read records only up to here: a record past it may still be cut off again (its
# fsync failed), and a reader must never show a change that was not acknowledged. Not fsynced: it only
# speaks to live readers; after a crash the next writer rewrites it.
DURABLE_FILE = "durable"
_DURABLE = struct.Struct("<QQ")


def log_dir(index_dir: Path) -> Path:
    return index_dir / "log"


def segment_name(first_seq: int) -> str:
    return f"wal-{first_seq:016d}.log"


def segments(index_dir: Path) -> list[tuple[int, Path]]:
    """``(first seq, path)`` of every segment, oldest first."""
    folder = log_dir(index_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found)


def read_durable(index_dir: Path) -> tuple[int, int] | None:
    """Where the running writer's durable records end: ``(segment's first seq, offset)``, if it says."""
    try:
        data = (log_dir(index_dir) / DURABLE_FILE).read_bytes()
    except OSError:
        return None
    return _DURABLE.unpack(data) if len(data) == _DURABLE.size else None


def frame(payload: bytes) -> bytes:
    length = struct.pack("<I", len(payload))
    return _HEADER.pack(len(payload), zlib.crc32(payload, zlib.crc32(length))) + payload


@dataclass
class Segment:
    """What a read of one segment found: the good records, where they end, and what follows them."""

    path: Path
    records: list[tuple[int, bytes]]  # (offset just after the record, payload)
    end: int  # offset just after the last good record
    size: int  # the file's size when read
    bad: str | None = None  # why reading stopped before ``size`` (torn or damaged record), if it did


def read_segment(path: Path, start: int = 0, stop: int | None = None) -> Segment:
    """Records from ``start`` (0: the file's beginning, after the magic) up to the first bad one, reading
    the file as if it ended at ``stop`` (a reader that stops where the writer's records are durable)."""
    with open(path, "rb") as f:
        data = f.read() if stop is None else f.read(stop)
    size = len(data)
    if size < start:  # cut back since the caller last read it (a failed append): read it again from the top
        return Segment(path, [], start, size, "shorter than when last read")
    if start == 0:
        if size < len(MAGIC):  # created, magic not yet (or never) written: an empty segment
            return Segment(path, [], 0, size, "incomplete header" if size else None)
        if data[: len(MAGIC)] != MAGIC:
            return Segment(path, [], 0, size, "not a log segment (bad magic)")
        start = len(MAGIC)
    records: list[tuple[int, bytes]] = []
    pos = start
    while pos < size:
        if size - pos < _HEADER.size:
            return Segment(path, records, pos, size, f"torn record header at offset {pos}")
        length, crc = _HEADER.unpack_from(data, pos)
        body = pos + _HEADER.size
        if length > MAX_RECORD or body + length > size:
            return Segment(path, records, pos, size, f"torn record at offset {pos} ({length} bytes announced)")
        payload = data[body : body + length]
        if zlib.crc32(payload, zlib.crc32(data[pos : pos + 4])) != crc:
            return Segment(path, records, pos, size, f"record at offset {pos} fails its CRC")
        pos = body + length
        records.append((pos, payload))
    return Segment(path, records, pos, size)


def _sync(fd: int) -> None:
    sync = getattr(os, "fdatasync", None) or os.fsync  # looked up per call: tests replace it to inject faults
    sync(fd)


class LogWriter:
    """Appends batches of records to one segment; used by the single writer of a gallery."""

    def __init__(self, path: Path, fd: int, size: int) -> None:
        self.path, self._fd, self._size = path, fd, size
        self.first_seq = int(_NAME.match(path.name).group(1))  # type: ignore[union-attr]
        self._pending_cut: int | None = None  # a failed batch not yet durably cut off: do that first
        self._durable_fd = -1

    @property
    def size(self) -> int:
        return self._size

    @classmethod
    def create(cls, index_dir: Path, first_seq: int) -> LogWriter:
        """A new, empty segment, durable (its directory entry too) before any record goes into it."""
        folder = log_dir(index_dir)
        path = folder / segment_name(first_seq)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        except OSError as exc:
            raise storage_error(exc, f"the log segment {path}") from exc
        writer = cls(path, fd, 0)
        try:
            writer._write_at(MAGIC, 0)
            _sync(fd)
            fsync_path(folder)
            fsync_path(folder.parent)
        except OSError as exc:
            writer.close()
            path.unlink(missing_ok=True)
            raise storage_error(exc, f"the log segment {path}") from exc
        writer._size = len(MAGIC)
        writer.mark_durable()
        return writer

    @classmethod
    def open(cls, path: Path, end: int, size: int) -> LogWriter:
        """Continue the segment after its last good record (``end``), cutting off a torn tail first."""
        try:
            fd = os.open(path, os.O_WRONLY)
        except OSError as exc:
            raise storage_error(exc, f"the log segment {path}") from exc
        writer = cls(path, fd, end)
        if end < len(MAGIC):  # an empty segment whose magic never made it: write it again
            writer._size = 0
            writer._cut(0)
            writer._append(MAGIC)
        elif size > end:
            log.warning("log %s: dropping %d bytes after offset %d (an interrupted append)", path, size - end, end)
            writer._cut(end)
        writer.mark_durable()
        return writer

    def append(self, payloads: list[bytes]) -> None:
        """Write and fsync ``payloads`` as one batch; on failure nothing of it stays in the file.

        If even cutting a failed batch off again fails (the disk refuses the truncation or its fsync),
        nothing is appended until a retry of that cut succeeds: a new batch written over a tail that may
        still hold the failed one could make its records readable again."""
        if self._pending_cut is not None:
            self._cut(self._pending_cut)
        self._append(b"".join(frame(p) for p in payloads))
        self.mark_durable()

    def mark_durable(self) -> None:
        """Tell readers in other processes how far the log is durable (best effort: they only lag)."""
        try:
            if self._durable_fd < 0:
                self._durable_fd = os.open(self.path.parent / DURABLE_FILE, os.O_RDWR | os.O_CREAT, 0o644)
            os.pwrite(self._durable_fd, _DURABLE.pack(self.first_seq, self._size), 0)
        except OSError as exc:
            log.warning("log %s: cannot update the durable mark for readers: %s", self.path, exc)

    def _append(self, data: bytes) -> None:
        start = self._size
        try:
            self._write_at(data, start)
            _sync(self._fd)
        except OSError as exc:
            error = storage_error(exc, f"the log {self.path}")
            self._cut(start, error)
            raise error from exc
        self._size = start + len(data)

    def _write_at(self, data: bytes, offset: int) -> None:
        view = memoryview(data)
        while view:  # a write may be short (a file-size limit, a full disk): continue, or fail with its error
            written = os.pwrite(self._fd, view, offset)
            view, offset = view[written:], offset + written

    def _cut(self, size: int, cause: StorageError | None = None) -> None:
        """Truncate back to ``size`` and make that durable. On failure the cut stays pending (retried before
        the next append) and the error is raised, unless ``cause`` (the append's own error) will be."""
        self._size = size
        try:
            os.ftruncate(self._fd, size)
            _sync(self._fd)
        except OSError as exc:
            log.error("log %s: cannot cut a failed append back to %d bytes: %s", self.path, size, exc)
            self._pending_cut = size
            if cause is None:
                raise storage_error(exc, f"the log {self.path}") from exc
            return
        self._pending_cut = None

    def close(self) -> None:
        for fd in (self._fd, self._durable_fd):
            if fd >= 0:
                os.close(fd)
        self._fd = self._durable_fd = -1


def check_segment_chain(found: list[Segment]) -> None:
    """Only the last segment may end in a bad record: a bad one earlier means acknowledged changes are lost."""
    for seg in found[:-1]:
        if seg.bad is not None:
            raise IndexCorruptError(
                f"Log file {seg.path} is damaged ({seg.bad}) and later log files follow it, so changes that "
                "were acknowledged would be lost. Restore the index folder from a backup, or rebuild it with "
                "`imgsim index build`."
            )
