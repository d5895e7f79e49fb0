"""The id -> item table of a snapshot, stored in SQLite beside the FAISS file.

Each snapshot gets a fresh database written in one transaction: the table is always consistent with the
index file it sits beside, and an interrupted write only ever damages a temporary directory.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from contextlib import closing
from pathlib import Path

from index.errors import IndexCorruptError
from index.records import ItemRecord

_SCHEMA = """
CREATE TABLE items (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL,
    label TEXT NOT NULL,
    sha256 TEXT NOT NULL UNIQUE,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    added_at REAL NOT NULL
);
CREATE INDEX items_label ON items(label);
"""
_COLUMNS = "id, path, label, sha256, width, height, added_at"


def write_metadata(records: Iterable[ItemRecord], path: Path) -> None:
    with closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA journal_mode=OFF")  # the file is new and private until renamed into place
        db.executescript(_SCHEMA)
        db.executemany(
            f"INSERT INTO items ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
            ((r.id, r.path, r.label, r.sha256, r.width, r.height, r.added_at) for r in records),
        )
        db.commit()


def read_metadata(path: Path) -> dict[int, ItemRecord]:
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            rows = db.execute(f"SELECT {_COLUMNS} FROM items ORDER BY id").fetchall()
    except sqlite3.DatabaseError as exc:
        raise IndexCorruptError(
            f"Metadata {path} is damaged ({exc}). Rebuild the index with `imgsim index build`."
        ) from exc
    return {int(r[0]): ItemRecord(int(r[0]), r[1], r[2], r[3], int(r[4]), int(r[5]), float(r[6])) for r in rows}
