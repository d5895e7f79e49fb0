"""``MilvusGallery``: the :class:`~index.backend.Gallery` on a Milvus collection (index/milvus/schema.py).

- Durable and visible when a call returns: Milvus acknowledges an insert or delete once it is in its write-ahead
  log (the message queue of a server; Milvus Lite's local file survives ``kill -9``: tests/index), and every read
  is Strong, so it sees every acknowledged change of any process. No process holds state another needs: any
  number of API replicas serve and change one gallery.
- Ids come from :class:`~index.milvus.ids.IdAllocator` (time-ordered, never reused). The version is
  the number of rows in ``NAME__changes`` (its creation, then one per change), so it grows with every change,
  in whichever replica.
- sha256 de-duplication is a lookup before the insert, under a lock of this process; two replicas adding the
  same new image in the same instant can both insert it (Milvus has no unique constraint), and then every read
  by sha256 answers the smaller id.
- Relabel is an upsert of the same row with the new label (same id, vector, image).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from index.backend import Location
from index.base import same_numerics
from index.errors import IndexMismatchError
from index.milvus import schema
from index.milvus.ids import IdAllocator
from index.milvus.items import CHUNK, ItemTable, count_rows, label_filter, to_record, to_row
from index.records import Hit, ItemRecord, NewItem
from index.vectors import check_vectors
from index.working import Committed

if TYPE_CHECKING:
    from pymilvus import MilvusClient

log = logging.getLogger(__name__)
MAX_TOPK = 16384  # Milvus's limit on k


class MilvusGallery:
    def __init__(self, client: MilvusClient, loc: Location, props: dict[str, str], media_dir: Path) -> None:
        self._client, self._loc, self._props = client, loc, props
        self._name, self._changes = loc.collection, schema.changes_name(loc.collection)
        self._media_dir = media_dir
        self._closed = False
        self._table = ItemTable(client, loc.collection)
        self._alloc = IdAllocator()
        self._lock = threading.Lock()  # one add's lookup-then-insert at a time in this process (sha256 de-dup)

    # ----------------------------------------------------------------- create / open / close
    @staticmethod
    def exists(loc: Location) -> bool:
        if loc.path is not None and not loc.path.exists():  # Milvus Lite keeps a folder named *.db
            return False
        client = schema.connect(loc)
        try:
            return bool(
                client.has_collection(loc.collection) and client.has_collection(schema.changes_name(loc.collection))
            )
        finally:
            schema.disconnect(client, loc)

    @classmethod
    def create(
        cls,
        loc: Location,
        *,
        model_hash: str,
        backbone: str,
        dim: int,
        gallery_root: str | Path | None = None,
        checkpoint: str | Path | None = None,
        precision: str = "fp32",
        media_dir: str | Path | None = None,
        index_type: str | None = None,
    ) -> MilvusGallery:
        """``index_type``: Milvus's vector index (default: FLAT on Milvus Lite, HNSW on a server)."""
        client = schema.connect(loc)
        if client.has_collection(loc.collection):
            schema.disconnect(client, loc)
            raise ValueError(f"{loc} already holds an index. Open it, or drop the collection / choose another name.")
        settings = schema.gallery_settings(
            model_hash=model_hash,
            backbone=backbone,
            dim=dim,
            kind=index_type or schema.index_type(loc),
            gallery_root=str(Path(gallery_root).resolve()) if gallery_root else None,
            checkpoint=str(checkpoint) if checkpoint else None,
            precision=precision,
        )
        schema.create_collections(client, loc, settings)
        return cls._loaded(client, loc, media_dir)

    @classmethod
    def open(
        cls,
        loc: Location,
        *,
        model_hash: str | None = None,
        dim: int | None = None,
        precision: str | None = None,
        media_dir: str | Path | None = None,
    ) -> MilvusGallery:
        client = schema.connect(loc)
        if not client.has_collection(loc.collection):
            schema.disconnect(client, loc)
            raise FileNotFoundError(f"No index at {loc}. Fill one with `imgsim index import`.")
        gallery = cls._loaded(client, loc, media_dir)
        rebuild = f"Rebuild it with `imgsim index build --checkpoint <your checkpoint> --out {loc}`."
        if model_hash is not None and gallery.model_hash != model_hash:
            gallery.close()
            raise IndexMismatchError(
                f"Index {loc} was built by model {gallery.model_hash[:12]}, not by this checkpoint "
                f"({model_hash[:12]}). {rebuild}"
            )
        if dim is not None and gallery.dim != dim:
            gallery.close()
            raise IndexMismatchError(f"Index {loc} holds {gallery.dim}-d vectors; this model makes {dim}-d. {rebuild}")
        if precision is not None and not same_numerics(gallery.precision, precision):
            gallery.close()
            raise IndexMismatchError(
                f"Index {loc} holds {gallery.precision} embeddings; this embedder computes in {precision}, whose "
                f"vectors differ slightly. Embed with precision {gallery.precision} (--precision, IMGSIM_PRECISION; "
                "auto follows the gallery), or export the gallery and import it into a new one re-embedded."
            )
        log.info("opened %s version %d: %d items", loc, gallery.version, gallery.count)
        return gallery

    @classmethod
    def _loaded(cls, client: MilvusClient, loc: Location, media_dir: str | Path | None) -> MilvusGallery:
        for name in (loc.collection, schema.changes_name(loc.collection)):
            client.load_collection(name)
        if media_dir is None:
            media_dir = loc.path.with_suffix(".media") if loc.path else Path("media") / loc.collection
        return cls(client, loc, schema.read_settings(client, loc.collection), Path(media_dir))

    def close(self, compact: bool = False) -> None:
        """Close the connection (``compact`` is the FAISS gallery's: Milvus compacts its segments itself)."""
        if not self._closed:
            self._closed = True
            schema.disconnect(self._client, self._loc)

    def __enter__(self) -> MilvusGallery:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ensure_writer(self) -> None:
        """Every process may write a Milvus gallery: nothing to take."""

    def refresh(self) -> bool:
        """Every read is Strong (sees every acknowledged change): there is nothing to catch up with."""
        return False

    def compact(self) -> int:
        """Nothing to fold: Milvus merges its segments and drops deleted rows in the background."""
        return self.version

    # ----------------------------------------------------------------- properties
    @property
    def location(self) -> str:
        return str(self._loc)

    @property
    def version(self) -> int:
        return count_rows(self._client, self._changes)  # the creation (row 0) is version 1

    @property
    def count(self) -> int:
        return count_rows(self._client, self._name)

    @property
    def dim(self) -> int:
        return int(self._props["dim"])

    @property
    def model_hash(self) -> str:
        return self._props["model_hash"]

    @property
    def precision(self) -> str:
        return self._props.get("precision") or "fp32"  # galleries made before precision was recorded: float

    @property
    def backbone(self) -> str:
        return self._props["backbone"]

    @property
    def checkpoint(self) -> str | None:
        return self._props.get("checkpoint") or None

    @property
    def gallery_root(self) -> Path | None:
        root = self._props.get("gallery_root")
        return Path(root) if root else None

    @property
    def media_dir(self) -> Path:
        self._media_dir.mkdir(parents=True, exist_ok=True)
        return self._media_dir

    @property
    def searched_in_memory(self) -> bool:
        return False

    def info(self) -> dict[str, Any]:
        return {
            "index": str(self._loc),
            "backend": self._loc.kind,
            "version": self.version,
            "count": self.count,
            "dim": self.dim,
            "index_type": self._props.get("index_type"),
            "model_hash": self.model_hash,
            "precision": self.precision,
            "backbone": self.backbone,
            "created": float(self._props.get("created") or 0),
            "gallery_root": str(self.gallery_root) if self.gallery_root else None,
            "checkpoint": self.checkpoint,
            "media_dir": str(self._media_dir),
            "labels": self.labels(),
        }

    # ----------------------------------------------------------------- reads
    def search(self, vectors: np.ndarray, k: int, label: str | None = None) -> list[list[Hit]]:
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}.")
        x = check_vectors(vectors, self.dim)
        if len(x) == 0:
            return []
        found = self._client.search(
            self._name,
            data=x.tolist(),
            limit=min(k, MAX_TOPK),
            filter=label_filter(label),
            output_fields=["label", "path"],
            search_params={"metric_type": "IP", "params": schema.SEARCH_PARAMS.get(self._props["index_type"], {})},
        )
        results = []
        for row in found:
            hits = []
            for hit in row:
                sim = max(-1.0, min(1.0, float(hit["distance"])))
                entity = hit["entity"]
                distance = float(np.sqrt(max(0.0, 2.0 - 2.0 * sim)))
                hits.append(Hit(int(hit["id"]), distance, sim, entity["label"], entity["path"]))
            results.append(hits)
        return results

    def get(self, id: int) -> ItemRecord | None:
        rows = self._client.get(self._name, ids=[int(id)], output_fields=schema.ITEM_FIELDS)
        return to_record(rows[0]) if rows else None

    def vector(self, id: int) -> np.ndarray | None:
        rows = self._client.get(self._name, ids=[int(id)], output_fields=["vector"])
        return np.asarray(rows[0]["vector"], dtype=np.float32) if rows else None

    def vectors(self, ids: Sequence[int]) -> np.ndarray:
        wanted = [int(i) for i in ids]
        got = {int(row["id"]): row["vector"] for row in self._table.get(wanted, ["vector"])}
        if len(got) != len(set(wanted)):
            raise KeyError("Some of these ids are not in the gallery.")
        return np.asarray([got[i] for i in wanted], dtype=np.float32).reshape(len(wanted), self.dim)

    def id_for_sha(self, sha256: str) -> int | None:
        return self._table.ids_for_shas([sha256]).get(sha256)

    def items(self, offset: int = 0, limit: int = 50, label: str | None = None) -> tuple[list[ItemRecord], int]:
        """A page in id order. Milvus answers queries in no particular order, so this sorts the matching ids
        (8 bytes each: 8 MB per million items) and fetches only the page's rows."""
        if offset < 0 or limit < 0:
            raise ValueError("offset and limit must be >= 0.")
        ids = self._table.ids(label_filter(label))
        page = ids[offset : offset + limit]
        return self._table.records(page), len(ids)

    def all_records(self) -> Iterator[ItemRecord]:
        ids = self._table.ids("")
        for start in range(0, len(ids), CHUNK):
            yield from self._table.records(ids[start : start + CHUNK])

    def image_path(self, id: int) -> Path | None:
        record = self.get(id)
        if record is None:
            return None
        path = Path(record.path)
        if path.is_absolute():
            return path
        if record.path.startswith("media/"):
            return self._media_dir / record.path.removeprefix("media/")
        root = self.gallery_root
        return root / path if root else None

    def labels(self) -> dict[str, int]:
        counts: Counter[str] = Counter()
        for batch in self._table.batches("", ["label"]):
            counts.update(row["label"] for row in batch)
        return dict(sorted(counts.items()))

    # ----------------------------------------------------------------- writes (durable when they return)
    def add(self, vectors: np.ndarray, items: Sequence[NewItem]) -> list[int]:
        return self.commit_add(vectors, items).ids

    def commit_add(self, vectors: np.ndarray, items: Sequence[NewItem]) -> Committed:
        x = check_vectors(vectors, self.dim)
        if len(items) != len(x):
            raise ValueError(f"{len(x)} vectors but {len(items)} items.")
        for item in items:
            if len(item.label) > schema.MAX_LABEL or len(item.path) > schema.MAX_PATH:
                raise ValueError(f"A label is at most {schema.MAX_LABEL} characters, a path {schema.MAX_PATH}.")
        if not items:
            return Committed(self.version)
        with self._lock:
            known = self._table.ids_for_shas(sorted({item.sha256 for item in items}))
            ids, rows, now = [], [], time.time()
            for vec, item in zip(x, items, strict=True):
                if item.sha256 not in known:
                    [known[item.sha256]] = self._alloc.take(1)
                    rows.append(to_row(known[item.sha256], vec, item, now))
                ids.append(known[item.sha256])
            self._table.insert(rows)
            version = self._changed("add") if rows else self.version
        return Committed(version, ids, [row["id"] for row in rows])

    def remove(self, ids: Sequence[int]) -> list[int]:
        return self.commit_remove(ids).ids

    def commit_remove(self, ids: Sequence[int]) -> Committed:
        wanted = list(dict.fromkeys(int(i) for i in ids))
        present = {int(r["id"]) for r in self._table.get(wanted, ["id"])}
        gone = [i for i in wanted if i in present]
        if not gone:
            return Committed(self.version)
        self._client.delete(self._name, ids=gone)
        return Committed(self._changed("remove"), gone)

    def relabel(self, id: int, label: str) -> Committed:
        if not isinstance(label, str) or not label:
            raise ValueError("A label must be a non-empty string.")
        if len(label) > schema.MAX_LABEL:
            raise ValueError(f"A label is at most {schema.MAX_LABEL} characters.")
        rows = self._client.get(self._name, ids=[int(id)], output_fields=[*schema.ITEM_FIELDS, "vector"])
        if not rows:
            return Committed(self.version)
        row = dict(rows[0])
        if row["label"] == label:
            return Committed(self.version, [int(id)])
        row["label"] = label
        self._client.upsert(self._name, [row])
        return Committed(self._changed("relabel"), [int(id)])

    def set_gallery_root(self, root: str | Path) -> None:
        settings = {**schema.read_settings(self._client, self._name), "gallery_root": str(Path(root).resolve())}
        schema.write_settings(self._client, self._name, settings)
        self._props = settings
        self._changed("settings")

    # ----------------------------------------------------------------- helpers
    def _changed(self, kind: str) -> int:
        """Record one change; returns the version that holds it."""
        [change_id] = self._alloc.take(1)
        self._client.insert(self._changes, [schema.change_row(change_id, kind)])
        return self.version
