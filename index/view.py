"""One published version of the gallery: a base plus a prefix of each delta (MVCC by prefix).

A :class:`View` is made once per committed batch, in O(1), and never changes; a reader takes the current
one and answers from it alone, so it sees exactly that version while writes go on. Point reads (``get``,
``id_for_sha``) look in the deltas, newest first, then in the base's database. What needs the whole
delta (the deleted ids, the relabels, each delta's live rows per label, the label counts) is computed on
first use and memoised on the view: its cost is the size of the delta, which compaction keeps small.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from index.base import Base
from index.delta import DeltaView
from index.records import ItemRecord


@dataclass(eq=False)
class View:
    version: int
    base: Base
    deltas: tuple[DeltaView, ...]  # oldest first; ids of a later delta are larger
    count: int
    next_id: int
    settings: dict[str, Any]  # search_params, gallery_root, checkpoint (the manifest's, changed by the log)
    memo: dict[Any, Any] = field(default_factory=dict)

    @property
    def search_params(self) -> dict[str, float]:
        params: dict[str, float] = self.settings.get("search_params") or {}
        return params

    @property
    def changes(self) -> int:
        return sum(dv.changes for dv in self.deltas)

    # -- point reads --------------------------------------------------------------------------------------
    def deleted(self, item_id: int) -> bool:
        return any(dv.deletes(item_id) for dv in self.deltas)

    def relabelled(self, item_id: int) -> str | None:
        for dv in reversed(self.deltas):
            label = dv.label_of(item_id)
            if label is not None:
                return label
        return None

    def _delta_record(self, item_id: int) -> ItemRecord | None:
        if item_id < self.base.next_id:
            return None
        for dv in self.deltas:
            row = dv.row(item_id)
            if row is not None:
                return dv.delta.records[row]
        return None

    def get(self, item_id: int) -> ItemRecord | None:
        if item_id < 0 or self.deleted(item_id):
            return None
        record = self._delta_record(item_id)
        if record is None and item_id < self.base.next_id:
            record = self.base.meta.row(item_id)
        return self._relabel(record) if record is not None else None

    def get_many(self, ids: list[int]) -> dict[int, ItemRecord]:
        """Live records of ``ids`` (one query for those in the base)."""
        found: dict[int, ItemRecord] = {}
        in_base = []
        for i in ids:
            if i < 0 or self.deleted(i):
                continue
            record = self._delta_record(i)
            if record is not None:
                found[i] = self._relabel(record)
            elif i < self.base.next_id:
                in_base.append(i)
        found.update({i: self._relabel(r) for i, r in self.base.meta.rows(in_base).items()})
        return found

    def _relabel(self, record: ItemRecord) -> ItemRecord:
        label = self.relabelled(record.id)
        return record if label is None or label == record.label else dataclasses.replace(record, label=label)

    def contains(self, item_id: int) -> bool:
        if item_id < 0 or self.deleted(item_id):
            return False
        if self._delta_record(item_id) is not None:
            return True
        return item_id < self.base.next_id and self.base.meta.exists(item_id)

    def id_for_sha(self, sha256: str) -> int | None:
        for dv in reversed(self.deltas):
            for item_id in reversed(dv.ids_for_sha(sha256)):
                if not self.deleted(item_id):
                    return item_id
        in_base = self.base.meta.id_for_sha(sha256)
        return in_base if in_base is not None and not self.deleted(in_base) else None

    def vector(self, item_id: int) -> np.ndarray | None:
        if item_id < 0 or self.deleted(item_id):
            return None
        for dv in self.deltas:
            row = dv.row(item_id)
            if row is not None:
                return np.array(dv.vectors[row])
        if item_id < self.base.next_id and self.base.meta.exists(item_id):
            return np.asarray(self.base.index.reconstruct(item_id))
        return None

    # -- whole-delta facts, memoised ----------------------------------------------------------------------
    def _memo(self, key: Any, make: Any) -> Any:
        if key not in self.memo:
            self.memo[key] = make()
        return self.memo[key]

    def deleted_ids(self) -> np.ndarray:
        """Every id removed since the base (sorted)."""
        return self._memo(
            "deleted", lambda: np.unique(np.asarray([i for dv in self.deltas for i in dv.deleted_ids()], np.int64))
        )

    def deleted_base_ids(self) -> np.ndarray:
        ids = self.deleted_ids()
        return ids[ids < self.base.next_id]

    def relabels(self) -> dict[int, str]:
        """The last label each relabelled id was given since the base (removed ids included)."""

        def make() -> dict[int, str]:
            final: dict[int, str] = {}
            for dv in self.deltas:
                final.update(dv.relabels())
            return final

        result: dict[int, str] = self._memo("relabels", make)
        return result

    def base_changes(self, label: str) -> tuple[list[int], list[int]]:
        """For the base's rows of ``label``: ids to leave out (removed or relabelled) and ids to add
        (base ids relabelled to ``label``)."""

        def make() -> tuple[list[int], list[int]]:
            relabels = self.relabels()
            deleted = self.deleted_base_ids()
            out = sorted({*deleted.tolist(), *(i for i in relabels if i < self.base.next_id)})
            dead = set(deleted.tolist())
            into = sorted(i for i, lab in relabels.items() if lab == label and i < self.base.next_id and i not in dead)
            return out, into

        result: tuple[list[int], list[int]] = self._memo(("base_changes", label), make)
        return result

    def delta_rows(self, label: str | None) -> list[np.ndarray]:
        """Per delta, the rows (< n_added) that are live and, with ``label``, carry it now."""

        def make() -> list[np.ndarray]:
            deleted, relabels = self.deleted_ids(), self.relabels()
            rows = []
            for dv in self.deltas:
                keep = ~np.isin(dv.ids[: dv.n_added], deleted)
                if label is not None:
                    labels = [relabels.get(r.id, r.label) for r in dv.records()]
                    keep &= np.fromiter((lab == label for lab in labels), dtype=bool, count=dv.n_added)
                rows.append(np.flatnonzero(keep))
            return rows

        result: list[np.ndarray] = self._memo(("delta_rows", label), make)
        return result

    def labels(self) -> dict[str, int]:
        def make() -> dict[str, int]:
            counts = dict(self.base.label_counts())
            for dv in self.deltas:
                for label, change in dv.events():
                    counts[label] = counts.get(label, 0) + change
            return {k: n for k, n in sorted(counts.items()) if n > 0}

        result: dict[str, int] = self._memo("labels", make)
        return dict(result)

    # -- listing ------------------------------------------------------------------------------------------
    def _delta_records(self, label: str | None) -> list[ItemRecord]:
        rows = self.delta_rows(label)
        return [self._relabel(dv.delta.records[r]) for dv, rr in zip(self.deltas, rows, strict=True) for r in rr]

    def items(self, offset: int, limit: int, label: str | None) -> tuple[list[ItemRecord], int]:
        """A page in id order (the base's rows, then the deltas'), and how many match in all."""
        total = self.count if label is None else self.labels().get(label, 0)
        in_deltas = self._delta_records(label)
        in_base = total - len(in_deltas)
        page: list[ItemRecord] = []
        if offset < in_base and limit > 0:
            include: list[int] = []
            if label is None:
                exclude = self.deleted_base_ids().tolist()
            else:
                exclude, include = self.base_changes(label)
            rows = self.base.meta.page(offset, min(limit, in_base - offset), label, exclude, include)
            page = [self._relabel(r) for r in rows]
        start = max(0, offset - in_base)
        page += in_deltas[start : start + limit - len(page)]
        return page, total

    def iter_records(self) -> Iterator[ItemRecord]:
        """Every live record in id order (the base a chunk at a time)."""
        deleted = set(self.deleted_base_ids().tolist())
        for record in self.base.meta.iter_rows():
            if record.id not in deleted:
                yield self._relabel(record)
        yield from self._delta_records(None)
