"""Stored gallery images: uploads are re-encoded (never kept or served as the raw bytes) and written atomically."""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

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


def write_atomic(path: Path, data: bytes) -> None:
    """Temp file in the same folder, fsync, rename, fsync the folder: a crash leaves the old file or the new."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
