"""Stored gallery images: uploads are re-encoded (never kept or served as the raw bytes); written with
:func:`model.core.files.write_atomic`."""

from __future__ import annotations

import io

from PIL import Image

JPEG_QUALITY = 90


def shrink(image: Image.Image, max_side: int) -> Image.Image:
    if max(image.size) <= max_side:
        return image
    copy = image.copy()
    copy.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return copy


def encode_jpeg(image: Image.Image, max_side: int | None = None, quality: int = JPEG_QUALITY) -> bytes:
    """RGB image -> fresh JPEG bytes; no metadata of the upload (EXIF, ICC, comments) survives."""
    if max_side is not None:
        image = shrink(image, max_side)
    out = io.BytesIO()
    image.convert("RGB").save(out, format="JPEG", quality=quality, optimize=False)
    return out.getvalue()
