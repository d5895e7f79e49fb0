"""The changes since the base, in memory: append-only, so that a published version is just a prefix.

One writer thread appends to a :class:`Delta`; a :class:`DeltaView` is the prefix that one published
version sees (how many adds, removals, relabels and label-count events). Readers never lock: they only
look at entries inside their prefix, and nothing inside a published prefix ever changes. Added vectors go
into a preallocated buffer that grows by doubling into a new buffer; a view keeps the buffer it was taken
with, whose rows inside its prefix stay valid.

A batch that could not be made durable is rolled back to a :class:`Mark`: only entries past every
published prefix are removed, so no reader can tell.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from index.records import ItemRecord


@dataclass(frozen=True)
class Mark:
    added: int
    deleted: int
    relabels: int
    events: int


class Delta:
    """Adds (vectors, records), removals and relabels since the base, in the order they were made."""

    def __init__(self, dim: int, capacity: int = 256) -> None:
        self.dim = dim
        self.vectors = np.empty((capacity, dim), dtype=np.float32)
        self.ids = np.empty(capacity, dtype=np.int64)
        self.records: list[ItemRecord] = []  # labels as added; relabels are separate
        self.row_of: dict[int, int] = {}
        self.by_sha: dict[str, list[int]] = {}
        self.deleted: list[int] = []  # ids removed, of this delta or of anything older
        self.deleted_at: dict[int, int] = {}
        self.relabels: list[tuple[int, str]] = []
        self.relabel_at: dict[int, list[int]] = {}
        self.events: list[tuple[str, int]] = []  # (label, +1 / -1): how the label counts moved
        self.first_change: float | None = None  # monotonic time of the first change (the age threshold)

    @property
    def changes(self) -> int:
        return len(self.records) + len(self.deleted) + len(self.relabels)

    def mark(self) -> Mark:
        return Mark(len(self.records), len(self.deleted), len(self.relabels), len(self.events))

    def view(self) -> DeltaView:
        m = self.mark()
        return DeltaView(self, self.vectors, self.ids, m.added, m.deleted, m.relabels, m.events)

    # -- appends (the writer thread only) --------------------------------------------------------------
    def add(self, vectors: np.ndarray, records: list[ItemRecord]) -> None:
        n, k = len(self.records), len(records)
        if n + k > len(self.ids):  # grow into new buffers: views taken before keep the old ones
            capacity = max(2 * len(self.ids), n + k)
            grown_v = np.empty((capacity, self.dim), dtype=np.float32)
            grown_i = np.empty(capacity, dtype=np.int64)
            grown_v[:n], grown_i[:n] = self.vectors[:n], self.ids[:n]
            self.vectors, self.ids = grown_v, grown_i
        self.vectors[n : n + k] = vectors
        self.ids[n : n + k] = [r.id for r in records]
        for row, record in enumerate(records, start=n):
            self.records.append(record)
            self.row_of[record.id] = row
            self.by_sha.setdefault(record.sha256, []).append(record.id)
            self.events.append((record.label, 1))
        self._touched()

    def delete(self, item_id: int, label: str) -> None:
        self.deleted_at[item_id] = len(self.deleted)
        self.deleted.append(item_id)
        self.events.append((label, -1))
        self._touched()

    def relabel(self, item_id: int, old: str, new: str) -> None:
        self.relabel_at.setdefault(item_id, []).append(len(self.relabels))
        self.relabels.append((item_id, new))
        self.events += [(old, -1), (new, 1)]
        self._touched()

    def _touched(self) -> None:
        if self.first_change is None:
            self.first_change = time.monotonic()

    def rollback(self, mark: Mark) -> None:
        """Forget everything appended after ``mark`` (which no published view includes)."""
        for record in reversed(self.records[mark.added :]):
            del self.row_of[record.id]
            shas = self.by_sha[record.sha256]
            shas.pop()
            if not shas:
                del self.by_sha[record.sha256]
        for item_id in self.deleted[mark.deleted :]:
            del self.deleted_at[item_id]
        for item_id, _ in reversed(self.relabels[mark.relabels :]):
            positions = self.relabel_at[item_id]
            positions.pop()
            if not positions:
                del self.relabel_at[item_id]
        del self.records[mark.added :], self.deleted[mark.deleted :]
        del self.relabels[mark.relabels :], self.events[mark.events :]
        if not self.changes:
            self.first_change = None


@dataclass(frozen=True, eq=False)
class DeltaView:
    """The prefix of a :class:`Delta` that one version sees."""

    delta: Delta
    vectors: np.ndarray  # the buffer when the view was taken (rows < n_added are final)
    ids: np.ndarray
    n_added: int
    n_deleted: int
    n_relabels: int
    n_events: int

    @property
    def changes(self) -> int:
        return self.n_added + self.n_deleted + self.n_relabels

    def row(self, item_id: int) -> int | None:
        row = self.delta.row_of.get(item_id)
        return row if row is not None and row < self.n_added else None

    def deletes(self, item_id: int) -> bool:
        pos = self.delta.deleted_at.get(item_id)
        return pos is not None and pos < self.n_deleted

    def label_of(self, item_id: int) -> str | None:
        """The label this prefix last gave ``item_id`` by a relabel, if any."""
        for pos in reversed(list(self.delta.relabel_at.get(item_id, ()))):
            if pos < self.n_relabels:
                return self.delta.relabels[pos][1]
        return None

    def ids_for_sha(self, sha256: str) -> list[int]:
        return [i for i in list(self.delta.by_sha.get(sha256, ())) if self.row(i) is not None]

    def records(self) -> list[ItemRecord]:
        return self.delta.records[: self.n_added]

    def deleted_ids(self) -> list[int]:
        return self.delta.deleted[: self.n_deleted]

    def relabels(self) -> list[tuple[int, str]]:
        return self.delta.relabels[: self.n_relabels]

    def events(self) -> list[tuple[str, int]]:
        return self.delta.events[: self.n_events]
