"""Request and response models of the public API, with examples for the OpenAPI page."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

HASH_EXAMPLE = "3f9a1c0e5b7d2a4c6e8f0a1b3c5d7e9f1a2b3c4d5e6f708192a3b4c5d6e7f809"


class ModelInfo(BaseModel):
    hash: str = Field(examples=[HASH_EXAMPLE])
    backbone: str = Field(examples=["efficientnet-lite0"])
    embedding_dim: int = Field(examples=[128])
    image_size: int = Field(examples=[224])
    precision: str = Field(description="what the embeddings are computed in: fp32, int8, fp16, bf16", examples=["int8"])


class CompareResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "dissimilarity": 0.42,
                    "similarity": 0.91,
                    "same": True,
                    "threshold": 0.8,
                    "same_probability": 0.93,
                    "model": {
                        "hash": HASH_EXAMPLE,
                        "backbone": "efficientnet-lite0",
                        "embedding_dim": 128,
                        "image_size": 224,
                        "precision": "int8",
                    },
                }
            ]
        }
    )
    dissimilarity: float = Field(description="Euclidean distance between the unit-length embeddings (0..2)")
    similarity: float = Field(description="cosine similarity of the embeddings (-1..1)")
    same: bool = Field(description="dissimilarity below the checkpoint's calibrated threshold")
    threshold: float
    same_probability: float | None = Field(
        description="calibrated probability that both photos show the same class, also for classes the model "
        "never trained on (null for a checkpoint trained before it was calibrated)"
    )
    model: ModelInfo


class SearchHit(BaseModel):
    id: int = Field(examples=[17])
    label: str = Field(examples=["beagle"])
    distance: float = Field(description="Euclidean distance to the query", examples=[0.37])
    similarity: float = Field(description="cosine similarity to the query", examples=[0.93])
    image_url: str = Field(examples=["/v1/gallery/17/image"])


class ModelCard(ModelInfo):
    """``GET /v1/model``: what is loaded, for callers that cache vectors or check compatibility."""

    threshold: float = Field(description="distances below this are the same kind (calibrated at training)")
    engine: str = Field(examples=["onnx"], description="the embedding engine: onnx or torch")
    device: str = Field(examples=["cpu"])
    distance: str = Field(
        default="euclidean", description="Euclidean distance between unit-length embeddings, 0..2; lower = more similar"
    )


class EmbedResponse(BaseModel):
    embeddings: list[list[float]] = Field(description="one unit-length vector per uploaded image, in upload order")
    model: ModelInfo


class VectorSearchRequest(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"vector": [0.1, 0.2, 0.3], "k": 5}]})
    vector: list[float] = Field(
        min_length=1,
        max_length=4096,
        description="an embedding of this model (GET /v1/model: embedding_dim); it is scaled to unit length",
    )
    k: int = Field(default=5, ge=1, le=100, description="number of results")
    label: str | None = Field(default=None, max_length=200, description="only items with this label")
    score_threshold: float | None = Field(
        default=None, ge=0, le=2, description="only results at most this distance away (lower = more similar)"
    )


class SearchResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "results": [
                        {
                            "id": 17,
                            "label": "beagle",
                            "distance": 0.37,
                            "similarity": 0.93,
                            "image_url": "/v1/gallery/17/image",
                        }
                    ],
                    "took_ms": 41.2,
                    "index_version": 3,
                }
            ]
        }
    )
    results: list[SearchHit] = Field(description="nearest first (lower distance = more similar)")
    took_ms: float
    index_version: int
    unknown_label: str | None = Field(
        default=None, description="set when the `label` asked for names no item in the gallery (then no results)"
    )
    known_labels: list[str] | None = Field(default=None, description="with unknown_label: the labels there are")


class BatchSearchResponse(BaseModel):
    queries: list[list[SearchHit]] = Field(description="one result list per uploaded image, in upload order")
    took_ms: float
    index_version: int
    unknown_label: str | None = Field(default=None, description="as in SearchResponse")
    known_labels: list[str] | None = Field(default=None, description="as in SearchResponse")


class GalleryItem(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": 17,
                    "label": "beagle",
                    "width": 480,
                    "height": 320,
                    "sha256": HASH_EXAMPLE,
                    "added_at": "2025-01-01T12:00:00Z",
                    "image_url": "/v1/gallery/17/image",
                }
            ]
        }
    )
    id: int
    label: str
    width: int
    height: int
    sha256: str
    added_at: datetime | None = None
    image_url: str


class AddItemResponse(GalleryItem):
    created: bool = Field(description="false when the same image (by sha256) was already in the gallery")
    index_version: int


class RelabelRequest(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"label": "beagle"}]})
    label: str = Field(min_length=1, max_length=200, description="the item's new label")


class RelabelResponse(GalleryItem):
    index_version: int = Field(description="the gallery version that holds the change (durable)")


class GalleryPage(BaseModel):
    items: list[GalleryItem]
    total: int
    offset: int
    limit: int
    labels: dict[str, int] = Field(description="item count per label in the whole gallery")
    unknown_label: str | None = Field(default=None, description="set when the `label` asked for names no item")


class DeleteResponse(BaseModel):
    id: int
    deleted: bool = True
    index_version: int


class Health(BaseModel):
    status: str = Field(examples=["ok"])


class Ready(BaseModel):
    status: str = Field(examples=["ready"])
