"""``POST /v1/compare``: are two photos of the same kind of dog?"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, UploadFile

from app.deps import ReadAccess, ServiceDep, read_upload
from app.errors import ServiceError
from app.problems import error_responses
from app.schemas import CompareResponse
from model.inference.compare import compare as compare_embeddings

router = APIRouter(prefix="/v1", tags=["compare"], dependencies=[ReadAccess])


@router.post(
    "/compare",
    response_model=CompareResponse,
    responses=error_responses(401, 413, 415, 422, 503),
    summary="Compare two images",
)
async def compare(
    service: ServiceDep,
    images: Annotated[list[UploadFile], File(description="exactly two images (JPEG, PNG, WebP, GIF, BMP)")],
) -> CompareResponse:
    """Embed both images in one forward pass. ``dissimilarity`` is the Euclidean distance between the
    embeddings; ``same`` is true when it is below the checkpoint's calibrated threshold; ``same_probability``
    is the calibrated probability of the same class. Both were calibrated on classes held out from training."""
    if len(images) != 2:
        raise ServiceError(422, "wrong_image_count", f"Send exactly two images; got {len(images)}.")
    uploads = [await read_upload(f, f"images[{i}]", service.settings.max_upload_bytes) for i, f in enumerate(images)]
    a, b = await service.embed(uploads)
    comparison = compare_embeddings(a, b, service.embedder.checkpoint)  # the verdict `imgsim compare` gives
    return CompareResponse(**comparison.to_dict(), model=service.model_info)
