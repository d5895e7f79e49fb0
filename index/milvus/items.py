"""The item collection, row by row: chunked requests (Milvus answers at most 16,384 rows per query and takes
64 MB per insert) and the conversion between rows and :class:`~index.records.ItemRecord`."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from index.milvus import schema
from index.records import ItemRecord, NewItem

if TYPE_CHECKING:
    from pymilvus import MilvusClient

CHUNK = 2000  # rows per request (well under both limits at 256-d)


class ItemTable:
    def __init__(self, client: MilvusClient, name: str) -> None:
        self.client, self.name = client, name

    def get(self, ids: Sequence[int], fields: list[str]) -> Iterator[dict[str, Any]]:
        wanted = [int(i) for i in ids]
        for start in range(0, len(wanted), CHUNK):
            yield from self.client.get(self.name, ids=wanted[start : start + CHUNK], output_fields=fields)

    def insert(self, rows: list[dict[str, Any]]) -> None:
        for start in range(0, len(rows), CHUNK):
            self.client.insert(self.name, rows[start : start + CHUNK])

    def batches(self, expr: str, fields: list[str]) -> Iterator[list[dict[str, Any]]]:
        """Every row matching ``expr``, a batch at a time, in no particular order."""
        it = self.client.query_iterator(self.name, batch_size=CHUNK * 4, filter=expr, output_fields=fields)
        try:
            while batch := it.next():
                yield batch
        finally:
            it.close()

    def ids(self, expr: str) -> list[int]:
        return sorted(int(row["id"]) for batch in self.batches(expr, ["id"]) for row in batch)

    def records(self, ids: Sequence[int]) -> list[ItemRecord]:
        """The records of ``ids`` that exist, in the order given."""
        by_id = {int(r["id"]): to_record(r) for r in self.get(ids, schema.ITEM_FIELDS)}
        return [by_id[i] for i in ids if i in by_id]

    def ids_for_shas(self, shas: Sequence[str]) -> dict[str, int]:
        """sha256 -> the smallest id holding it (two replicas may have added the same content at once)."""
        found: dict[str, int] = {}
        for start in range(0, len(shas), CHUNK):
            listed = ", ".join(schema.label_literal(s) for s in shas[start : start + CHUNK])
            for row in self.client.query(self.name, filter=f"sha256 in [{listed}]", output_fields=["id", "sha256"]):
                sha, id_ = row["sha256"], int(row["id"])
                found[sha] = min(id_, found.get(sha, id_))
        return found


def count_rows(client: MilvusClient, collection: str, expr: str = "") -> int:
    rows = client.query(collection, filter=expr, output_fields=["count(*)"])
    return int(rows[0]["count(*)"])


def label_filter(label: str | None) -> str:
    return "" if label is None else f"label == {schema.label_literal(label)}"


def to_row(id_: int, vector: np.ndarray, item: NewItem, now: float) -> dict[str, Any]:
    return {
        "id": id_,
        "vector": vector.tolist(),
        "label": item.label,
        "sha256": item.sha256,
        "path": item.path,
        "width": int(item.width),
        "height": int(item.height),
        "added_at": now,
    }


def to_record(row: dict[str, Any]) -> ItemRecord:
    return ItemRecord(
        int(row["id"]),
        row["path"],
        row["label"],
        row["sha256"],
        int(row["width"]),
        int(row["height"]),
        float(row["added_at"]),
    )
