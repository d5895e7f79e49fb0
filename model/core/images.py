"""The one image loader shared by training, indexing and the service.

Every path into the model goes through :func:`load_image`, so a photo is decoded the same way when it is
trained on, indexed and queried. The rules follow ``shared/docs/RELIABILITY.md``: sniff the bytes against an
allow-list (never trust names or declared types), cap the pixel count before decoding, decode JPEGs at reduced
size with ``draft``, apply EXIF orientation, and bring every mode to 8-bit RGB.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp"})
MAX_PIXELS = 40_000_000  # 40 MP: above any phone photo, far below a decompression bomb
BACKGROUND = (255, 255, 255)  # transparent pixels are composited on white, deterministically


class ImageError(ValueError):
    """An input that is not a usable image. ``code`` is stable and machine-readable."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def load_image(
    source: str | Path | bytes | BinaryIO,
    *,
    draft_size: int | None = None,
    max_pixels: int = MAX_PIXELS,
) -> Image.Image:
    """Decode ``source`` into an 8-bit RGB image, or raise :class:`ImageError`.

    ``draft_size`` lets the JPEG decoder skip detail: it decodes at the smallest power-of-two scale whose
    result is still at least ``draft_size`` on each side, which is several times faster than a full decode.
    """
    if isinstance(source, bytes):
        if not source:
            raise ImageError("empty_image", "The upload is empty (0 bytes).")
        fp: BinaryIO = io.BytesIO(source)
    elif isinstance(source, str | Path):
        fp = open(source, "rb")  # noqa: SIM115 - closed in the finally below
    else:
        fp = source
    try:
        return _decode(fp, draft_size=draft_size, max_pixels=max_pixels)
    finally:
        if isinstance(source, str | Path):
            fp.close()


def _decode(fp: BinaryIO, *, draft_size: int | None, max_pixels: int) -> Image.Image:
    head = fp.read(1)
    if not head:
        raise ImageError("empty_image", "The image is empty (0 bytes).")
    fp.seek(0)
    with warnings.catch_warnings():
        # Pillow only warns between 1x and 2x its own cap; we refuse at our own cap instead.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(fp, formats=ALLOWED_FORMATS)
        except UnidentifiedImageError as exc:
            raise ImageError(
                "unsupported_format",
                f"Not a supported image. Only {', '.join(ALLOWED_FORMATS)} are supported.",
            ) from exc
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageError(
                "image_too_large", f"The image has too many pixels (cap {max_pixels:,})."
            ) from exc
        except OSError as exc:
            raise ImageError("corrupt_image", f"The image could not be read: {exc}") from exc
        width, height = image.size
        if width < 1 or height < 1:
            raise ImageError("corrupt_image", "The image has no pixels.")
        if width * height > max_pixels:
            raise ImageError(
                "image_too_large",
                f"The image is {width}x{height} = {width * height:,} pixels; the cap is {max_pixels:,}.",
            )
        if draft_size is not None and image.format == "JPEG":
            image.draft("RGB", (draft_size, draft_size))
        try:
            image.seek(0)  # animated GIF/WebP: the first frame only
            image.load()
            oriented: Image.Image = ImageOps.exif_transpose(image) or image
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise ImageError("corrupt_image", f"The image could not be decoded: {exc}") from exc
    return to_rgb(oriented)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB: 16/32-bit scaled (not clamped), transparency composited."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or array.max(initial=0) > 255 else 255.0
        if mode == "F":
            top = max(float(array.max(initial=0)), 1.0)
        scaled = np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(scaled, mode="L").convert("RGB")
    if mode == "P":
        image = image.convert("RGBA") if "transparency" in image.info else image.convert("RGB")
        mode = image.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, BACKGROUND)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    if mode != "RGB":
        return image.convert("RGB")
    return image


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")
