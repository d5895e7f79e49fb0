"""``Client`` (sync) and ``AsyncClient``: the same methods, typed answers, timeouts and retries (``retry.py``).

    with Client("http://127.0.0.1:8000", api_key="...") as imgsim:
        hits = imgsim.search("dog.jpg", k=5).results

Every error answer raises :class:`ApiError` with the service's stable ``code``; a service that cannot be
reached after the retries raises httpx's own ``ConnectError``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel

from imgsim_client import calls
from imgsim_client.calls import Call, ImageInput
from imgsim_client.errors import ApiError
from imgsim_client.models import (
    AddItemResponse,
    BatchSearchResponse,
    CompareResponse,
    DeleteResponse,
    EmbedResponse,
    GalleryItem,
    GalleryPage,
    ModelCard,
    RelabelResponse,
    SearchResponse,
)
from imgsim_client.retry import Retry

M = TypeVar("M", bound=BaseModel)
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=5.0)  # an embedding waits in the service's queue; a connect should not


def _options(api_key: str | None, timeout: float | httpx.Timeout, kwargs: dict[str, Any]) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return {"headers": {**headers, **kwargs.pop("headers", {})}, "timeout": timeout, **kwargs}


def _answer(model: type[M], response: httpx.Response) -> M:
    if not response.is_success:
        raise ApiError.from_response(response)
    return model.model_validate(response.json())


def _content(response: httpx.Response) -> bytes:
    if not response.is_success:
        raise ApiError.from_response(response)
    return response.content


class Client:
    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        retry: Retry | None = None,
        **kwargs: Any,
    ) -> None:
        """``kwargs`` go to ``httpx.Client`` (``transport``, ``verify``, ``headers``, ...)."""
        self.retry = retry or Retry()
        self.http = httpx.Client(base_url=base_url, **_options(api_key, timeout, kwargs))

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def _send(self, call: Call) -> httpx.Response:
        attempt = 0
        while True:
            attempt += 1
            outcome: httpx.Response | Exception
            try:
                outcome = self.http.request(call.method, call.url, **call.options)
            except httpx.TransportError as exc:
                outcome = exc
            wait = self.retry.wait(attempt, outcome)
            if wait is None:
                if isinstance(outcome, Exception):
                    raise outcome
                return outcome
            time.sleep(wait)

    def compare(self, a: ImageInput, b: ImageInput) -> CompareResponse:
        return _answer(CompareResponse, self._send(calls.compare(a, b)))

    def search(
        self, image: ImageInput, k: int = 5, label: str | None = None, score_threshold: float | None = None
    ) -> SearchResponse:
        return _answer(SearchResponse, self._send(calls.search(image, k, label, score_threshold)))

    def search_batch(
        self, images: Sequence[ImageInput], k: int = 5, label: str | None = None, score_threshold: float | None = None
    ) -> BatchSearchResponse:
        return _answer(BatchSearchResponse, self._send(calls.search_batch(images, k, label, score_threshold)))

    def search_vector(
        self, vector: Sequence[float], k: int = 5, label: str | None = None, score_threshold: float | None = None
    ) -> SearchResponse:
        return _answer(SearchResponse, self._send(calls.search_vector(vector, k, label, score_threshold)))

    def embed(self, images: Sequence[ImageInput]) -> EmbedResponse:
        return _answer(EmbedResponse, self._send(calls.embed(images)))

    def similar(
        self, item_id: int, k: int = 5, label: str | None = None, score_threshold: float | None = None
    ) -> SearchResponse:
        return _answer(SearchResponse, self._send(calls.similar(item_id, k, label, score_threshold)))

    def list_items(self, offset: int = 0, limit: int = 50, label: str | None = None) -> GalleryPage:
        return _answer(GalleryPage, self._send(calls.list_items(offset, limit, label)))

    def get_item(self, item_id: int) -> GalleryItem:
        return _answer(GalleryItem, self._send(calls.get_item(item_id)))

    def get_image(self, item_id: int, size: int | None = None) -> bytes:
        return _content(self._send(calls.get_image(item_id, size)))

    def add(self, image: ImageInput, label: str) -> AddItemResponse:
        return _answer(AddItemResponse, self._send(calls.add(image, label)))

    def relabel(self, item_id: int, label: str) -> RelabelResponse:
        return _answer(RelabelResponse, self._send(calls.relabel(item_id, label)))

    def delete(self, item_id: int) -> DeleteResponse:
        return _answer(DeleteResponse, self._send(calls.delete(item_id)))

    def model(self) -> ModelCard:
        return _answer(ModelCard, self._send(calls.model()))

    def ready(self) -> bool:
        """One look at readiness, no retries: True once the model and the gallery are loaded."""
        try:
            return self.http.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False


class AsyncClient:
    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        retry: Retry | None = None,
        **kwargs: Any,
    ) -> None:
        """``kwargs`` go to ``httpx.AsyncClient`` (``transport``, ``verify``, ``headers``, ...)."""
        self.retry = retry or Retry()
        self.http = httpx.AsyncClient(base_url=base_url, **_options(api_key, timeout, kwargs))

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def _send(self, call: Call) -> httpx.Response:
        attempt = 0
        while True:
            attempt += 1
            outcome: httpx.Response | Exception
            try:
                outcome = await self.http.request(call.method, call.url, **call.options)
            except httpx.TransportError as exc:
                outcome = exc
            wait = self.retry.wait(attempt, outcome)
            if wait is None:
                if isinstance(outcome, Exception):
                    raise outcome
                return outcome
            await asyncio.sleep(wait)

    async def compare(self, a: ImageInput, b: ImageInput) -> CompareResponse:
        return _answer(CompareResponse, await self._send(calls.compare(a, b)))

    async def search(
        self, image: ImageInput, k: int = 5, label: str | None = None, score_threshold: float | None = None
    ) -> SearchResponse:
        return _answer(SearchResponse, await self._send(calls.search(image, k, label, score_threshold)))

    async def search_batch(
        self, images: Sequence[ImageInput], k: int = 5, label: str | None = None, score_threshold: float | None = None
    ) -> BatchSearchResponse:
        return _answer(BatchSearchResponse, await self._send(calls.search_batch(images, k, label, score_threshold)))

    async def search_vector(
        self, vector: Sequence[float], k: int = 5, label: str | None = None, score_threshold: float | None = None
    ) -> SearchResponse:
        return _answer(SearchResponse, await self._send(calls.search_vector(vector, k, label, score_threshold)))

    async def embed(self, images: Sequence[ImageInput]) -> EmbedResponse:
        return _answer(EmbedResponse, await self._send(calls.embed(images)))

    async def similar(
        self, item_id: int, k: int = 5, label: str | None = None, score_threshold: float | None = None
    ) -> SearchResponse:
        return _answer(SearchResponse, await self._send(calls.similar(item_id, k, label, score_threshold)))

    async def list_items(self, offset: int = 0, limit: int = 50, label: str | None = None) -> GalleryPage:
        return _answer(GalleryPage, await self._send(calls.list_items(offset, limit, label)))

    async def get_item(self, item_id: int) -> GalleryItem:
        return _answer(GalleryItem, await self._send(calls.get_item(item_id)))

    async def get_image(self, item_id: int, size: int | None = None) -> bytes:
        return _content(await self._send(calls.get_image(item_id, size)))

    async def add(self, image: ImageInput, label: str) -> AddItemResponse:
        return _answer(AddItemResponse, await self._send(calls.add(image, label)))

    async def relabel(self, item_id: int, label: str) -> RelabelResponse:
        return _answer(RelabelResponse, await self._send(calls.relabel(item_id, label)))

    async def delete(self, item_id: int) -> DeleteResponse:
        return _answer(DeleteResponse, await self._send(calls.delete(item_id)))

    async def model(self) -> ModelCard:
        return _answer(ModelCard, await self._send(calls.model()))

    async def ready(self) -> bool:
        try:
            return (await self.http.get("/readyz")).status_code == 200
        except httpx.TransportError:
            return False
