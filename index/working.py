"""The writer's side of the gallery: the newest state, to which changes are applied before they are published.

:class:`Working` holds the base, the deltas (the last one takes new changes) and the counters of the newest
version. The same :meth:`Working.apply` serves the writer (after validating a request, before its log
record is durable: rolled back if the log write fails) and replay (at open and on ``refresh``). Requests are
turned into changes by :func:`prepare`, which validates them against the state that includes the earlier
changes of the same batch: sha256 de-duplication, fresh ids, only live ids removed or relabelled.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from index import factory as fx
from index.base import Base
from index.changes import AddChange, Change, RelabelChange, RemoveChange, SettingsChange
from index.delta import Delta, Mark
from index.errors import IndexCorruptError
from index.records import ItemRecord, NewItem
from index.view import View


@dataclass(frozen=True)
class AddRequest:
    vectors: np.ndarray  # unit length, one per item
    items: Sequence[NewItem]


@dataclass(frozen=True)
class RemoveRequest:
    ids: list[int]


@dataclass(frozen=True)
class RelabelRequest:
    id: int
    label: str


@dataclass(frozen=True)
class SettingsRequest:
    values: dict[str, Any]


Request = AddRequest | RemoveRequest | RelabelRequest | SettingsRequest


@dataclass(frozen=True)
class Committed:
    """What a durable change did: the version that holds it, the ids it concerns and those it created."""

    version: int
    ids: list[int] = field(default_factory=list)  # add: one per item; remove / relabel: the ids changed
    created: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class _Saved:
    version: int
    count: int
    next_id: int
    settings: dict[str, Any]
    delta: Mark


@dataclass
class Working:
    base: Base
    deltas: list[Delta]
    version: int
    count: int
    next_id: int
    settings: dict[str, Any]
    fresh_since: int  # the version the last delta (the one that takes changes) started from

    @classmethod
    def at(cls, base: Base) -> Working:
        m = base.manifest
        settings = {"search_params": m.search_params, "gallery_root": m.gallery_root, "checkpoint": m.checkpoint}
        return cls(base, [Delta(m.dim)], m.version, m.count, m.next_id, settings, m.version)

    def seal(self) -> None:
        """Start a fresh delta: the ones before it are left for compaction to fold into the next base."""
        self.deltas.append(Delta(self.base.manifest.dim))
        self.fresh_since = self.version

    @property
    def fresh(self) -> Delta:
        return self.deltas[-1]

    def view(self) -> View:
        deltas = tuple(d.view() for d in self.deltas)
        return View(self.version, self.base, deltas, self.count, self.next_id, self.settings)

    def save(self) -> _Saved:
        return _Saved(self.version, self.count, self.next_id, self.settings, self.fresh.mark())

    def restore(self, saved: _Saved) -> None:
        self.fresh.rollback(saved.delta)
        self.version, self.count, self.next_id, self.settings = (
            saved.version,
            saved.count,
            saved.next_id,
            saved.settings,
        )

    def apply(self, seq: int, change: Change, view: View | None = None) -> None:
        """Apply ``change`` as version ``seq`` (= this version + 1). ``view``: the current state, if at hand."""
        if seq != self.version + 1:
            raise IndexCorruptError(
                f"Log record {seq} follows version {self.version}: changes are missing. Restore the index "
                "folder from a backup, or rebuild it with `imgsim index build`."
            )
        view = view or self.view()
        if isinstance(change, AddChange):
            if min(change.ids) < self.next_id:  # ids only grow: an id below next_id was given out before
                raise _inconsistent(seq, "adds an id that was given out before")
            self.fresh.add(change.vectors, change.records)
            self.count += len(change.records)
            self.next_id = max(self.next_id, max(change.ids) + 1)
        elif isinstance(change, RemoveChange):
            found = view.get_many(change.ids)
            if len(found) != len(set(change.ids)) or len(found) != len(change.ids):
                raise _inconsistent(seq, "removes an id that does not exist")
            for item_id in change.ids:
                self.fresh.delete(item_id, found[item_id].label)
            self.count -= len(change.ids)
        elif isinstance(change, RelabelChange):
            record = view.get(change.id)
            if record is None:
                raise _inconsistent(seq, "relabels an id that does not exist")
            self.fresh.relabel(change.id, record.label, change.label)
        else:
            self.settings = {**self.settings, **change.values}
        self.version = seq


def _inconsistent(seq: int, what: str) -> IndexCorruptError:
    return IndexCorruptError(
        f"Log record {seq} {what}: the log does not fit its base. Rebuild the index with `imgsim index build`."
    )


def prepare(view: View, request: Request, now: float) -> tuple[Change | None, Committed]:
    """The change ``request`` makes to ``view`` (None: nothing to change) and its result, without a version."""
    if isinstance(request, AddRequest):
        return _prepare_add(view, request, now)
    if isinstance(request, RemoveRequest):
        gone = [i for i in dict.fromkeys(int(i) for i in request.ids) if view.contains(i)]
        return (RemoveChange(gone) if gone else None), Committed(0, gone)
    if isinstance(request, RelabelRequest):
        record = view.get(int(request.id))
        if record is None:
            return None, Committed(0)
        if record.label == request.label:
            return None, Committed(0, [record.id])
        return RelabelChange(record.id, request.label), Committed(0, [record.id])
    return SettingsChange(dict(request.values)), Committed(0)


def _prepare_add(view: View, request: AddRequest, now: float) -> tuple[AddChange | None, Committed]:
    ids: list[int] = []
    rows: list[int] = []
    records: list[ItemRecord] = []
    seen: dict[str, int] = {}
    for row, item in enumerate(request.items):
        known = seen.get(item.sha256)
        if known is None:
            known = view.id_for_sha(item.sha256)
        if known is not None:
            ids.append(known)
            continue
        new_id = view.next_id + len(records)
        seen[item.sha256] = new_id
        ids.append(new_id)
        rows.append(row)
        records.append(ItemRecord(new_id, item.path, item.label, item.sha256, int(item.width), int(item.height), now))
    if not records:
        return None, Committed(0, ids)
    index = view.base.index
    if not index.is_trained:  # the base is trained when compaction first builds it: it needs enough vectors
        need = fx.min_train_size(index)
        have = view.count + len(records)
        if have < need:
            raise ValueError(
                f"Index type {view.base.manifest.factory} must be trained on at least {need} vectors; got {have}. "
                "Use the exact type (--factory IDMap2,Flat) for a gallery this small."
            )
    vectors = np.ascontiguousarray(request.vectors[rows], dtype=np.float32)
    return AddChange(vectors, records), Committed(0, ids, [r.id for r in records])
