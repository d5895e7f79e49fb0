"""A small typed client for other services, on httpx, sync (``Client``) and async (``AsyncClient``).

    with Client("http://localhost:8000", api_key="...") as c:
        hits = c.search("dog.jpg", k=5).results

Errors come back as :class:`ApiError` with the service's stable ``code``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel

from app.schemas import (
    AddItemResponse,
    BatchSearchResponse,
    CompareResponse,
    DeleteResponse,
    GalleryItem,
    GalleryPage,
    SearchResponse,
)

ImageInput = str | Path | bytes
M = TypeVar("M", bound=BaseModel)

__all__ = ["ApiError", "AsyncClient", "Client"]


class ApiError(Exception):
    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status, self.code, self.detail = status, code, detail


def _file(field: str, image: ImageInput) -> tuple[str, tuple[str, bytes, str]]:
    data = image if isinstance(image, bytes) else Path(image).read_bytes()
    return field, ("image", data, "application/octet-stream")  # the server sniffs the bytes anyway


def _check(response: httpx.Response) -> httpx.Response:
    if response.is_success:
        return response
    try:
        body = response.json()
        code, detail = str(body["code"]), str(body["detail"])
    except (ValueError, KeyError, TypeError):
        code, detail = "http_error", response.text[:200]
    raise ApiError(response.status_code, code, detail)


def _parse(model: type[M], response: httpx.Response) -> M:
    return model.model_validate(_check(response).json())


def _form(k: int | None = None, label: str | None = None) -> dict[str, str]:
    data = {} if k is None else {"k": str(k)}
    if label is not None:
        data["label"] = label
    return data


def _headers(api_key: str | None) -> dict[str, str]:
    return {"X-API-Key": api_key} if api_key else {}


class Client:
    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        **kwargs: Any,
    ) -> None:
        self.http = httpx.Client(base_url=base_url, headers=_headers(api_key), timeout=timeout, **kwargs)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def compare(self, a: ImageInput, b: ImageInput) -> CompareResponse:
        files = [_file("images", a), _file("images", b)]
        return _parse(CompareResponse, self.http.post("/v1/compare", files=files))

    def search(self, image: ImageInput, k: int = 5, label: str | None = None) -> SearchResponse:
        r = self.http.post("/v1/search", files=[_file("image", image)], data=_form(k, label))
        return _parse(SearchResponse, r)

    def search_batch(self, images: list[ImageInput], k: int = 5, label: str | None = None) -> BatchSearchResponse:
        r = self.http.post("/v1/search/batch", files=[_file("images", i) for i in images], data=_form(k, label))
        return _parse(BatchSearchResponse, r)

    def similar(self, item_id: int, k: int = 5, label: str | None = None) -> SearchResponse:
        r = self.http.get(f"/v1/gallery/{item_id}/similar", params=_form(k, label))
        return _parse(SearchResponse, r)

    def list_items(self, offset: int = 0, limit: int = 50, label: str | None = None) -> GalleryPage:
        params: dict[str, Any] = {"offset": offset, "limit": limit, **_form(None, label)}
        return _parse(GalleryPage, self.http.get("/v1/gallery", params=params))

    def get_item(self, item_id: int) -> GalleryItem:
        return _parse(GalleryItem, self.http.get(f"/v1/gallery/{item_id}"))

    def get_image(self, item_id: int, size: int | None = None) -> bytes:
        params = {"size": size} if size else {}
        return _check(self.http.get(f"/v1/gallery/{item_id}/image", params=params)).content

    def add(self, image: ImageInput, label: str) -> AddItemResponse:
        r = self.http.post("/v1/gallery", files=[_file("image", image)], data={"label": label})
        return _parse(AddItemResponse, r)

    def delete(self, item_id: int) -> DeleteResponse:
        return _parse(DeleteResponse, self.http.delete(f"/v1/gallery/{item_id}"))

    def ready(self) -> bool:
        return self.http.get("/readyz").status_code == 200


class AsyncClient:
    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        **kwargs: Any,
    ) -> None:
        self.http = httpx.AsyncClient(base_url=base_url, headers=_headers(api_key), timeout=timeout, **kwargs)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def compare(self, a: ImageInput, b: ImageInput) -> CompareResponse:
        files = [_file("images", a), _file("images", b)]
        return _parse(CompareResponse, await self.http.post("/v1/compare", files=files))

    async def search(self, image: ImageInput, k: int = 5, label: str | None = None) -> SearchResponse:
        r = await self.http.post("/v1/search", files=[_file("image", image)], data=_form(k, label))
        return _parse(SearchResponse, r)

    async def search_batch(self, images: list[ImageInput], k: int = 5, label: str | None = None) -> BatchSearchResponse:
        files = [_file("images", i) for i in images]
        return _parse(BatchSearchResponse, await self.http.post("/v1/search/batch", files=files, data=_form(k, label)))

    async def similar(self, item_id: int, k: int = 5, label: str | None = None) -> SearchResponse:
        r = await self.http.get(f"/v1/gallery/{item_id}/similar", params=_form(k, label))
        return _parse(SearchResponse, r)

    async def list_items(self, offset: int = 0, limit: int = 50, label: str | None = None) -> GalleryPage:
        params: dict[str, Any] = {"offset": offset, "limit": limit, **_form(None, label)}
        return _parse(GalleryPage, await self.http.get("/v1/gallery", params=params))

    async def get_item(self, item_id: int) -> GalleryItem:
        return _parse(GalleryItem, await self.http.get(f"/v1/gallery/{item_id}"))

    async def get_image(self, item_id: int, size: int | None = None) -> bytes:
        params = {"size": size} if size else {}
        return _check(await self.http.get(f"/v1/gallery/{item_id}/image", params=params)).content

    async def add(self, image: ImageInput, label: str) -> AddItemResponse:
        r = await self.http.post("/v1/gallery", files=[_file("image", image)], data={"label": label})
        return _parse(AddItemResponse, r)

    async def delete(self, item_id: int) -> DeleteResponse:
        return _parse(DeleteResponse, await self.http.delete(f"/v1/gallery/{item_id}"))

    async def ready(self) -> bool:
        return (await self.http.get("/readyz")).status_code == 200
