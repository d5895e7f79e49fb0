"""The service's answers as typed models (the names are the OpenAPI schema's; a test in the imgsim repository
checks every field against the live schema). Unknown fields are ignored, so a newer service does not break an
older client."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict


class _Answer(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, protected_namespaces=())


class ModelInfo(_Answer):
    hash: str
    backbone: str
    embedding_dim: int
    image_size: int
    precision: str  # what the embeddings are computed in: fp32, int8, fp16, bf16


class ModelCard(ModelInfo):
    threshold: float
    engine: str
    device: str
    distance: str = "euclidean"


class CompareResponse(_Answer):
    dissimilarity: float  # Euclidean distance of the unit embeddings: lower = more similar
    similarity: float
    same: bool
    threshold: float
    same_probability: float | None  # calibrated P(same); None for checkpoints without that calibration
    model: ModelInfo


class SearchHit(_Answer):
    id: int
    label: str
    distance: float  # lower = more similar
    similarity: float
    image_url: str


class SearchResponse(_Answer):
    results: list[SearchHit]
    took_ms: float
    index_version: int
    unknown_label: str | None = None  # the label asked for names no item (then there are no results) ...
    known_labels: list[str] | None = None  # ... and these are the labels there are


class BatchSearchResponse(_Answer):
    queries: list[list[SearchHit]]
    took_ms: float
    index_version: int
    unknown_label: str | None = None
    known_labels: list[str] | None = None


class EmbedResponse(_Answer):
    embeddings: list[list[float]]
    model: ModelInfo


class GalleryItem(_Answer):
    id: int
    label: str
    width: int
    height: int
    sha256: str
    added_at: datetime | None = None
    image_url: str


class AddItemResponse(GalleryItem):
    created: bool
    index_version: int


class GalleryPage(_Answer):
    items: list[GalleryItem]
    total: int
    offset: int
    limit: int
    labels: dict[str, int]
    unknown_label: str | None = None


class DeleteResponse(_Answer):
    id: int
    deleted: bool = True
    index_version: int


class RelabelResponse(GalleryItem):
    index_version: int
