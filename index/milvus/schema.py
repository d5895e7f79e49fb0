"""The Milvus side of a gallery: how to connect, the collections' schemas, and the gallery's settings.

A gallery ``NAME`` is two collections: ``NAME`` (one row per item: id, unit vector, label, sha256, path,
size, time added) and ``NAME__changes`` (one row per change: their count is the gallery's version). Row 0 of
the changes is the gallery's creation and holds its settings as JSON (model hash, backbone, embedding size,
vector index, gallery folder, checkpoint). Not collection properties: Milvus Lite 2.x (the C++ engine) keeps
none and cannot alter them; a row works on every Milvus.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from index.backend import Location

if TYPE_CHECKING:
    from pymilvus import MilvusClient

SETTINGS_ROW = 0
# Vector index parameters by type (AUTOINDEX and FLAT take none): bench_backends measures their recall.
BUILD_PARAMS: dict[str, dict[str, int]] = {"HNSW": {"M": 32, "efConstruction": 200}, "IVF_FLAT": {"nlist": 1024}}
SEARCH_PARAMS: dict[str, dict[str, int]] = {"HNSW": {"ef": 64}, "IVF_FLAT": {"nprobe": 32}}
MAX_SETTINGS = 65_535
CONNECT_TIMEOUT_S = 10.0
MAX_LABEL = MAX_SHA = 512
MAX_PATH = 4096
ITEM_FIELDS = ["id", "label", "sha256", "path", "width", "height", "added_at"]


def changes_name(collection: str) -> str:
    return f"{collection}__changes"


_lite_lock = threading.Lock()
_lite_users: Counter[str] = Counter()  # open galleries per Milvus Lite file in this process


def connect(loc: Location) -> MilvusClient:
    try:
        from pymilvus import MilvusClient
    except ImportError as exc:  # the optional extra
        raise RuntimeError(f"{loc} is a Milvus gallery: install the scale extra, pip install 'imgsim[scale]'.") from exc
    if loc.kind == "milvus-lite":
        assert loc.path is not None
        loc.path.parent.mkdir(parents=True, exist_ok=True)
        with _lite_lock:
            client = MilvusClient(str(loc.path))
            _lite_users[str(loc.path.resolve())] += 1
        return client
    from pymilvus import MilvusException

    try:
        # IMGSIM_MILVUS_TOKEN: "user:password" or an API key, when the server checks them.
        return MilvusClient(uri=loc.uri, token=os.environ.get("IMGSIM_MILVUS_TOKEN", ""), timeout=CONNECT_TIMEOUT_S)
    except MilvusException as exc:
        raise ConnectionError(f"Milvus at {loc.uri} cannot be reached ({exc.message}). Is it running?") from exc


def disconnect(client: MilvusClient, loc: Location) -> None:
    """Close ``client``; the last one of a Milvus Lite file also stops its engine (which runs in this process
    and holds the file's lock until then), so another process may open the file."""
    client.close()
    if loc.kind != "milvus-lite" or loc.path is None:
        return
    key = str(loc.path.resolve())
    with _lite_lock:
        _lite_users[key] -= 1
        if _lite_users[key] <= 0:
            del _lite_users[key]
            from milvus_lite.server_manager import server_manager_instance

            server_manager_instance.release_server(key)


def index_type(loc: Location) -> str:
    # Exact search on Milvus Lite (its small galleries, and the same answers as FAISS's exact index); a server
    # builds HNSW on sealed segments (growing ones are searched exactly either way).
    return "FLAT" if loc.kind == "milvus-lite" else "HNSW"


def create_collections(client: MilvusClient, loc: Location, settings: dict[str, str]) -> None:
    """The item and change collections, and the changes' row 0 holding ``settings``."""
    dim, kind = int(settings["dim"]), settings["index_type"]
    from pymilvus import DataType, MilvusClient

    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
    schema.add_field("label", DataType.VARCHAR, max_length=MAX_LABEL)
    schema.add_field("sha256", DataType.VARCHAR, max_length=MAX_SHA)
    schema.add_field("path", DataType.VARCHAR, max_length=MAX_PATH)
    schema.add_field("width", DataType.INT32)
    schema.add_field("height", DataType.INT32)
    schema.add_field("added_at", DataType.DOUBLE)
    params = client.prepare_index_params()
    extra: dict[str, Any] = {"params": BUILD_PARAMS[kind]} if kind in BUILD_PARAMS else {}
    params.add_index("vector", index_type=kind, metric_type="IP", **extra)
    # Strong: a read waits for every write acknowledged before it, in any process (read-your-writes).
    client.create_collection(loc.collection, schema=schema, index_params=params, consistency_level="Strong")
    log = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    log.add_field("id", DataType.INT64, is_primary=True)
    log.add_field("kind", DataType.VARCHAR, max_length=16)
    log.add_field("at", DataType.DOUBLE)
    log.add_field("data", DataType.VARCHAR, max_length=MAX_SETTINGS)
    log.add_field("v", DataType.FLOAT_VECTOR, dim=2)  # Milvus wants a vector field in every collection
    log_params = client.prepare_index_params()
    log_params.add_index("v", index_type="FLAT", metric_type="L2")
    client.create_collection(
        changes_name(loc.collection), schema=log, index_params=log_params, consistency_level="Strong"
    )
    write_settings(client, loc.collection, settings)


def change_row(id_: int, kind: str, data: str = "") -> dict[str, Any]:
    return {"id": id_, "kind": kind, "at": time.time(), "data": data, "v": [0.0, 0.0]}


def write_settings(client: MilvusClient, collection: str, settings: dict[str, str]) -> None:
    client.upsert(changes_name(collection), [change_row(SETTINGS_ROW, "created", json.dumps(settings))])


def read_settings(client: MilvusClient, collection: str) -> dict[str, str]:
    rows = client.get(changes_name(collection), ids=[SETTINGS_ROW], output_fields=["data"])
    if not rows:
        raise ValueError(f"Milvus collection {collection} is not an imgsim gallery (no settings row).")
    settings: dict[str, str] = json.loads(rows[0]["data"])
    return settings


def gallery_settings(
    *,
    model_hash: str,
    backbone: str,
    dim: int,
    kind: str,
    gallery_root: str | None,
    checkpoint: str | None,
    precision: str = "fp32",
) -> dict[str, str]:
    return {
        "model_hash": model_hash,
        "precision": precision,
        "backbone": backbone,
        "dim": str(dim),
        "index_type": kind,
        "created": str(time.time()),
        "gallery_root": gallery_root or "",
        "checkpoint": checkpoint or "",
    }


def label_literal(label: str) -> str:
    """``label`` as a Milvus string literal (quotes and backslashes escaped: no filter injection)."""
    return '"' + label.replace("\\", "\\\\").replace('"', '\\"') + '"'
