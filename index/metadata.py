"""The id -> item table of a base snapshot: SQLite beside the FAISS file, read on demand, never changed.

A base's database is written once (a fresh one, or a copy of the previous base's with the compacted changes
applied in one transaction) inside the snapshot's temporary directory, and is read-only afterwards: readers
open it with ``immutable=1`` (no locks, no change detection) from a small pool of connections. Items are
looked up by id, by sha256 and by label through indexes; nothing loads the whole table into Python.
"""

from __future__ import annotations

import json
import queue
import shutil
import sqlite3
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import numpy as np

from index.errors import IndexCorruptError
from index.records import ItemRecord

_TABLES = """
CREATE TABLE items (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL,
    label TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    added_at REAL NOT NULL
);
CREATE TABLE label_counts (label TEXT PRIMARY KEY, n INTEGER NOT NULL);
"""
# Built after the rows are in: one sort instead of a B-tree insert per row (minutes at 10M rows).
_INDEXES = "CREATE UNIQUE INDEX items_sha ON items(sha256); CREATE INDEX items_label ON items(label);"
_COLUMNS = "id, path, label, sha256, width, height, added_at"
_INSERT = f"INSERT INTO items ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"
_IN_LIST = "(SELECT value FROM json_each(?))"  # any number of ids as one parameter


def _row(r: ItemRecord) -> tuple[int, str, str, str, int, int, float]:
    return (r.id, r.path, r.label, r.sha256, r.width, r.height, r.added_at)


def _record(row: tuple) -> ItemRecord:  # type: ignore[type-arg,unused-ignore]
    return ItemRecord(int(row[0]), row[1], row[2], row[3], int(row[4]), int(row[5]), float(row[6]))


def _write_counts(db: sqlite3.Connection, counts: dict[str, int]) -> None:
    db.execute("DELETE FROM label_counts")
    db.executemany("INSERT INTO label_counts (label, n) VALUES (?, ?)", [(k, n) for k, n in counts.items() if n])


def write_metadata(records: Iterable[ItemRecord], path: Path) -> dict[str, int]:
    """A fresh database holding ``records``; returns its label counts."""
    counts: Counter[str] = Counter()

    def rows() -> Iterator[tuple[int, str, str, str, int, int, float]]:
        for r in records:
            counts[r.label] += 1
            yield _row(r)

    with closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA journal_mode=OFF")  # the file is new and private until its snapshot is renamed in
        db.executescript(_TABLES)
        db.executemany(_INSERT, rows())
        db.executescript(_INDEXES)
        _write_counts(db, dict(counts))
        db.commit()
    return dict(sorted(counts.items()))


def write_next_metadata(
    previous: Path,
    path: Path,
    removed: list[int],
    relabels: dict[int, str],
    added: list[ItemRecord],
    counts: dict[str, int],
) -> None:
    """The previous base's database with a compaction's changes applied, in one transaction."""
    shutil.copyfile(previous, path)
    with closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA journal_mode=OFF")  # a private copy: a crash only ever loses the temporary directory
        db.execute("PRAGMA synchronous=OFF")  # the snapshot writer fsyncs the finished file
        db.execute("CREATE TABLE IF NOT EXISTS label_counts (label TEXT PRIMARY KEY, n INTEGER NOT NULL)")
        db.execute(f"DELETE FROM items WHERE id IN {_IN_LIST}", (json.dumps(removed),))
        db.executemany("UPDATE items SET label = ? WHERE id = ?", [(lab, i) for i, lab in relabels.items()])
        db.executemany(_INSERT, (_row(r) for r in added))
        _write_counts(db, counts)
        db.commit()


class MetadataReader:
    """Read-only queries on one base's database, from any thread.

    Threads take connections from a pool and open more as needed. One connection, opened (and used) at
    once, stays open as long as the reader: it keeps the file itself open, so a version still being read
    after a compaction deleted its snapshot keeps working, on that connection (SQLite is built serialized
    here: a connection may be shared between threads)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._uri = path.resolve().as_uri() + "?mode=ro&immutable=1"
        self._pool: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        try:
            self._keeper = sqlite3.connect(self._uri, uri=True, check_same_thread=False)
            self._keeper.execute("SELECT id FROM items LIMIT 1").fetchall()  # the file is opened on first use
        except sqlite3.DatabaseError as exc:
            raise IndexCorruptError(
                f"Metadata {self.path} is damaged ({exc}). Rebuild the index with `imgsim index build`."
            ) from exc

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        try:
            db = self._pool.get_nowait()
        except queue.Empty:
            db = self._open_or_share()
        try:
            yield db
        except sqlite3.DatabaseError as exc:
            raise IndexCorruptError(
                f"Metadata {self.path} is damaged ({exc}). Rebuild the index with `imgsim index build`."
            ) from exc
        finally:
            if db is not self._keeper:
                self._pool.put(db)

    def _open_or_share(self) -> sqlite3.Connection:
        if self.path.exists():
            try:
                return sqlite3.connect(self._uri, uri=True, check_same_thread=False)
            except sqlite3.OperationalError:
                pass  # deleted meanwhile
        return self._keeper  # the snapshot is gone (an old version): share the connection that holds it

    def check(self) -> None:
        with self._db() as db:
            db.execute("SELECT id FROM items LIMIT 1").fetchall()

    def close(self) -> None:
        while True:
            try:
                self._pool.get_nowait().close()
            except queue.Empty:
                break
        self._keeper.close()

    def row(self, item_id: int) -> ItemRecord | None:
        with self._db() as db:
            row = db.execute(f"SELECT {_COLUMNS} FROM items WHERE id = ?", (item_id,)).fetchone()
        return _record(row) if row else None

    def rows(self, ids: list[int]) -> dict[int, ItemRecord]:
        if not ids:
            return {}
        with self._db() as db:
            found = db.execute(f"SELECT {_COLUMNS} FROM items WHERE id IN {_IN_LIST}", (json.dumps(ids),))
            return {int(r[0]): _record(r) for r in found}

    def exists(self, item_id: int) -> bool:
        with self._db() as db:
            return db.execute("SELECT 1 FROM items WHERE id = ?", (item_id,)).fetchone() is not None

    def id_for_sha(self, sha256: str) -> int | None:
        with self._db() as db:
            row = db.execute("SELECT id FROM items WHERE sha256 = ?", (sha256,)).fetchone()
        return int(row[0]) if row else None

    def ids_with_label(self, label: str) -> np.ndarray:
        with self._db() as db:
            rows = db.execute("SELECT id FROM items WHERE label = ? ORDER BY id", (label,))
            return np.fromiter((r[0] for r in rows), dtype=np.int64)

    def all_ids(self) -> np.ndarray:
        with self._db() as db:
            return np.fromiter((r[0] for r in db.execute("SELECT id FROM items ORDER BY id")), dtype=np.int64)

    def label_counts(self) -> dict[str, int]:
        with self._db() as db:
            has_table = db.execute("SELECT 1 FROM sqlite_master WHERE name = 'label_counts'").fetchone()
            query = (
                "SELECT label, n FROM label_counts"
                if has_table  # format 1 snapshots have no such table: count them
                else "SELECT label, COUNT(*) FROM items GROUP BY label"
            )
            return {str(k): int(n) for k, n in db.execute(query)}

    def page(
        self, offset: int, limit: int, label: str | None, exclude: list[int], include: list[int]
    ) -> list[ItemRecord]:
        """Rows in id order, skipping ``exclude``; with ``label``, its rows plus the ``include`` ids."""
        if label is None:
            sql = f"SELECT {_COLUMNS} FROM items WHERE id NOT IN {_IN_LIST} ORDER BY id LIMIT ? OFFSET ?"
            params: tuple[object, ...] = (json.dumps(exclude), limit, offset)
        else:
            sql = (
                f"SELECT {_COLUMNS} FROM items WHERE label = ? AND id NOT IN {_IN_LIST} "
                f"UNION ALL SELECT {_COLUMNS} FROM items WHERE id IN {_IN_LIST} ORDER BY id LIMIT ? OFFSET ?"
            )
            params = (label, json.dumps(exclude), json.dumps(include), limit, offset)
        with self._db() as db:
            return [_record(r) for r in db.execute(sql, params)]

    def iter_rows(self, chunk: int = 10_000) -> Iterator[ItemRecord]:
        """Every row in id order, a chunk at a time (keyset pagination: no OFFSET scans)."""
        after = -1
        while True:
            with self._db() as db:
                rows = db.execute(
                    f"SELECT {_COLUMNS} FROM items WHERE id > ? ORDER BY id LIMIT ?", (after, chunk)
                ).fetchall()
            if not rows:
                return
            yield from (_record(r) for r in rows)
            after = int(rows[-1][0])
