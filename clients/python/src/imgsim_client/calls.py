"""Each endpoint as a request description, shared by the sync and the async client (which only send them)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ImageInput = str | Path | bytes  # a file's path, or its bytes
FileField = tuple[str, tuple[str, bytes, str]]


@dataclass(frozen=True)
class Call:
    method: str
    url: str
    options: dict[str, Any] = field(default_factory=dict)  # httpx.request's files / data / params / json


def _file(name: str, image: ImageInput) -> FileField:
    data = image if isinstance(image, bytes) else Path(image).read_bytes()
    return name, ("image", data, "application/octet-stream")  # the service sniffs the bytes, not the name


def _form(k: int | None = None, label: str | None = None, score_threshold: float | None = None) -> dict[str, str]:
    given = {"k": k, "label": label, "score_threshold": score_threshold}
    return {name: str(value) for name, value in given.items() if value is not None}


def compare(a: ImageInput, b: ImageInput) -> Call:
    return Call("POST", "/v1/compare", {"files": [_file("images", a), _file("images", b)]})


def search(image: ImageInput, k: int, label: str | None, score_threshold: float | None) -> Call:
    return Call("POST", "/v1/search", {"files": [_file("image", image)], "data": _form(k, label, score_threshold)})


def search_batch(images: Sequence[ImageInput], k: int, label: str | None, score_threshold: float | None) -> Call:
    files = [_file("images", i) for i in images]
    return Call("POST", "/v1/search/batch", {"files": files, "data": _form(k, label, score_threshold)})


def search_vector(vector: Sequence[float], k: int, label: str | None, score_threshold: float | None) -> Call:
    body = {"vector": [float(v) for v in vector], "k": k, "label": label, "score_threshold": score_threshold}
    return Call("POST", "/v1/search/vector", {"json": {k_: v for k_, v in body.items() if v is not None}})


def embed(images: Sequence[ImageInput]) -> Call:
    return Call("POST", "/v1/embed", {"files": [_file("images", i) for i in images]})


def similar(item_id: int, k: int, label: str | None, score_threshold: float | None) -> Call:
    return Call("GET", f"/v1/gallery/{int(item_id)}/similar", {"params": _form(k, label, score_threshold)})


def list_items(offset: int, limit: int, label: str | None) -> Call:
    return Call("GET", "/v1/gallery", {"params": {"offset": offset, "limit": limit, **_form(label=label)}})


def get_item(item_id: int) -> Call:
    return Call("GET", f"/v1/gallery/{int(item_id)}")


def get_image(item_id: int, size: int | None) -> Call:
    return Call("GET", f"/v1/gallery/{int(item_id)}/image", {"params": {"size": size} if size else {}})


def add(image: ImageInput, label: str) -> Call:
    return Call("POST", "/v1/gallery", {"files": [_file("image", image)], "data": {"label": label}})


def relabel(item_id: int, label: str) -> Call:
    return Call("PATCH", f"/v1/gallery/{int(item_id)}", {"json": {"label": label}})


def delete(item_id: int) -> Call:
    return Call("DELETE", f"/v1/gallery/{int(item_id)}")


def model() -> Call:
    return Call("GET", "/v1/model")
