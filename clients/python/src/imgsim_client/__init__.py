"""imgsim-client: a small typed client for the imgsim service (httpx and pydantic only)."""

from imgsim_client.calls import ImageInput
from imgsim_client.client import AsyncClient, Client
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
    ModelInfo,
    RelabelResponse,
    SearchHit,
    SearchResponse,
)
from imgsim_client.retry import Retry

__all__ = [
    "AddItemResponse",
    "ApiError",
    "AsyncClient",
    "BatchSearchResponse",
    "Client",
    "CompareResponse",
    "DeleteResponse",
    "EmbedResponse",
    "GalleryItem",
    "GalleryPage",
    "ImageInput",
    "ModelCard",
    "ModelInfo",
    "RelabelResponse",
    "Retry",
    "SearchHit",
    "SearchResponse",
]
