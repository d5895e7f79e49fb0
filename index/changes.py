"""The changes a gallery logs, and their bytes: one log record per change, carrying the version it creates.

A record's payload is ``[u64 seq][u8 op]`` followed by the change:

- add: ``[u32 n][u32 dim]``, n int64 ids, n*dim float32 vectors, then JSON ``[[path, label, sha256, width,
  height, added_at], ...]`` (one batch add is one record, so it is applied whole or not at all);
- remove: ``[u32 n]`` and n int64 ids;
- relabel: ``[i64 id]`` and the label in UTF-8;
- settings: JSON ``{"search_params": ..., "gallery_root": ..., "checkpoint": ...}`` (the keys that change).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from index.errors import IndexCorruptError
from index.records import ItemRecord

_HEAD = struct.Struct("<QB")
_COUNTS = struct.Struct("<II")
_ADD, _REMOVE, _RELABEL, _SETTINGS = 1, 2, 3, 4


@dataclass(frozen=True)
class AddChange:
    vectors: np.ndarray  # (n, dim) float32, unit length
    records: list[ItemRecord]  # their ids are the new ids

    @property
    def ids(self) -> list[int]:
        return [r.id for r in self.records]


@dataclass(frozen=True)
class RemoveChange:
    ids: list[int]


@dataclass(frozen=True)
class RelabelChange:
    id: int
    label: str


@dataclass(frozen=True)
class SettingsChange:
    values: dict[str, Any]


Change = AddChange | RemoveChange | RelabelChange | SettingsChange


def encode(seq: int, change: Change) -> bytes:
    if isinstance(change, AddChange):
        n, dim = change.vectors.shape
        meta = [[r.path, r.label, r.sha256, r.width, r.height, r.added_at] for r in change.records]
        return b"".join(
            (
                _HEAD.pack(seq, _ADD),
                _COUNTS.pack(n, dim),
                np.asarray(change.ids, dtype="<i8").tobytes(),
                np.ascontiguousarray(change.vectors, dtype="<f4").tobytes(),
                json.dumps(meta, ensure_ascii=False).encode(),
            )
        )
    if isinstance(change, RemoveChange):
        ids = np.asarray(change.ids, dtype="<i8")
        return _HEAD.pack(seq, _REMOVE) + struct.pack("<I", len(ids)) + ids.tobytes()
    if isinstance(change, RelabelChange):
        return _HEAD.pack(seq, _RELABEL) + struct.pack("<q", change.id) + change.label.encode()
    return _HEAD.pack(seq, _SETTINGS) + json.dumps(change.values, ensure_ascii=False).encode()


def decode(payload: bytes) -> tuple[int, Change]:
    """``(seq, change)``; a payload that passed its CRC but does not parse is a corrupt index."""
    try:
        return _decode(payload)
    except (struct.error, ValueError, TypeError, IndexError) as exc:
        raise IndexCorruptError(
            f"A log record does not parse ({exc}). Rebuild the index with `imgsim index build`."
        ) from exc


def _decode(payload: bytes) -> tuple[int, Change]:
    seq, op = _HEAD.unpack_from(payload)
    body = memoryview(payload)[_HEAD.size :]
    if op == _ADD:
        n, dim = _COUNTS.unpack_from(body)
        pos = _COUNTS.size
        ids = np.frombuffer(body, dtype="<i8", count=n, offset=pos).astype(np.int64)
        pos += 8 * n
        vectors = np.frombuffer(body, dtype="<f4", count=n * dim, offset=pos).astype(np.float32).reshape(n, dim)
        meta = json.loads(bytes(body[pos + 4 * n * dim :]))
        if len(meta) != n:
            raise ValueError(f"{n} ids but {len(meta)} metadata rows")
        records = [
            ItemRecord(int(i), str(p), str(lab), str(sha), int(w), int(h), float(at))
            for i, (p, lab, sha, w, h, at) in zip(ids.tolist(), meta, strict=True)
        ]
        return seq, AddChange(vectors, records)
    if op == _REMOVE:
        (n,) = struct.unpack_from("<I", body)
        return seq, RemoveChange(np.frombuffer(body, dtype="<i8", count=n, offset=4).astype(np.int64).tolist())
    if op == _RELABEL:
        (item_id,) = struct.unpack_from("<q", body)
        return seq, RelabelChange(item_id, bytes(body[8:]).decode())
    if op == _SETTINGS:
        values = json.loads(bytes(body))
        if not isinstance(values, dict):
            raise ValueError("settings record is not an object")
        return seq, SettingsChange(values)
    raise ValueError(f"unknown operation {op}")
