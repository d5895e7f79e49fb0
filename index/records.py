"""The plain records the index hands out: search hits, stored items, items to add."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class NewItem:
    path: str  # relative to the gallery root, or "media/..." relative to the index directory
    label: str
    sha256: str
    width: int
    height: int


@dataclass(frozen=True)
class ItemRecord:
    id: int
    path: str
    label: str
    sha256: str
    width: int
    height: int
    added_at: float  # unix seconds


@dataclass(frozen=True)
class Hit:
    id: int
    distance: float  # Euclidean between unit vectors: sqrt(max(0, 2 - 2 cos))
    similarity: float  # cosine
    label: str
    path: str
