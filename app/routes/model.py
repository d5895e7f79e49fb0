"""What is loaded (``GET /v1/model``) and photos to vectors (``POST /v1/embed``), for services that keep their
own vectors or search by vector (``POST /v1/search/vector``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, UploadFile

from app.deps import ReadAccess, ServiceDep, read_upload
from app.errors import ServiceError
from app.problems import error_responses
from app.schemas import EmbedResponse, ModelCard

router = APIRouter(prefix="/v1", tags=["model"], dependencies=[ReadAccess])


@router.get("/model", response_model=ModelCard, responses=error_responses(401, 503), summary="The loaded model")
async def model_card(service: ServiceDep) -> ModelCard:
    embedder = service.embedder
    return ModelCard(
        **service.model_info.model_dump(),
        threshold=embedder.checkpoint.threshold,
        engine=embedder.engine_name,
        device=str(embedder.device),
    )


@router.post(
    "/embed",
    response_model=EmbedResponse,
    responses=error_responses(401, 413, 415, 422, 503),
    summary="Embed photos: one unit-length vector each",
)
async def embed(
    service: ServiceDep,
    images: Annotated[list[UploadFile], File(description="one or more images (JPEG, PNG, WebP, GIF, BMP)")],
) -> EmbedResponse:
    """The vectors the gallery and every search use (same decoding, crop and model), through the same batcher
    and admission; any image's error fails the request with its code."""
    limit = service.settings.max_batch_images
    if len(images) > limit:
        raise ServiceError(422, "too_many_images", f"Send at most {limit} images; got {len(images)}.")
    uploads = [await read_upload(f, f"images[{i}]", service.settings.max_upload_bytes) for i, f in enumerate(images)]
    vectors = await service.embed(uploads)
    return EmbedResponse(embeddings=vectors.astype(float).tolist(), model=service.model_info)
