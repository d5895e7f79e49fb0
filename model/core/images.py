"""The one image loader shared by training, indexing and the service.

Every path into the model goes through :func:`load_image` (or, for the JPEG fast paths, :func:`probe` and the same
:func:`check_geometry`), so a photo is decoded, accepted and refused the same way when it is trained on, indexed
and queried. The rules follow ``shared/docs/RELIABILITY.md``: sniff the bytes against an allow-list (never trust
names or declared types), cap the pixel count and the aspect ratio before decoding, decode JPEGs at reduced size
with ``draft``, apply EXIF orientation, and bring every mode to 8-bit RGB. Whatever the decoder raises on bad bytes
becomes an :class:`ImageError` with a stable code: one bad file never fails more than itself.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TypeVar

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp"})
MAX_PIXELS = 40_000_000  # 40 MP: above any phone photo, far below a decompression bomb
# The model sees the centre square of the short side, so an image 10x wider than high shows it under a tenth
# of itself, and resizing the short side to the model's size costs memory in proportion to the ratio (a 71-byte
# 4000x1 PNG asked for 0.8 GB). At 10:1 the resized image is at most 256 x 2560 pixels (2 MB).
MAX_ASPECT_RATIO = 10
BACKGROUND = (255, 255, 255)  # transparent pixels are composited on white, deterministically
EXIF_ORIENTATION = 0x0112

T = TypeVar("T")


class ImageError(ValueError):
    """An input that is not a usable image. ``code`` is stable and machine-readable."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


@dataclass(frozen=True)
class ImageHeader:
    """What the header says, before any pixel is decoded."""

    format: str
    mode: str
    width: int  # as stored, before EXIF rotation
    height: int
    orientation: int  # EXIF orientation, 1 = upright

    def decoded_size(self, draft_size: int | None) -> tuple[int, int]:
        """The size :func:`load_image` decodes at with ``draft_size`` (Pillow's JPEG ``draft`` scale rule)."""
        if draft_size is None or self.format != "JPEG":
            return self.width, self.height
        scale = next(s for s in (8, 4, 2, 1) if min(self.width, self.height) // draft_size >= s or s == 1)
        return -(-self.width // scale), -(-self.height // scale)

    def decode_bytes(self, draft_size: int | None) -> int:
        """An upper estimate of the memory that :func:`load_image` and a tensor copy of its result take at their
        peak, per decoded pixel: Pillow's image (1 byte for 8-bit single-band modes, 2 for 16-bit, else 4), its
        RGB conversion (4), compositing transparency (8 more), 16-bit and float modes scaled through float64
        arrays (24 more), ``pil_to_tensor``'s two 3-byte copies and the decoder's own buffers (7). Checked
        against measured peaks in tests/test_hostile_images.py."""
        width, height = self.decoded_size(draft_size)
        mode = self.mode
        source = 1 if mode in ("1", "L", "P") else 2 if mode.startswith("I;16") else 4
        rgb = 0 if mode == "RGB" else 4
        alpha = 8 if mode in ("P", "RGBA", "LA", "PA", "RGBa", "La") else 0
        scaled = 24 if mode.startswith("I") or mode == "F" else 0
        return width * height * (source + rgb + alpha + scaled + 7)


def check_geometry(width: int, height: int, max_pixels: int = MAX_PIXELS) -> None:
    """The size rules every decode path applies to the header, before decoding: raises :class:`ImageError`."""
    if width < 1 or height < 1:
        raise ImageError("corrupt_image", "The image has no pixels.")
    if width * height > max_pixels:
        raise ImageError(
            "image_too_large",
            f"The image is {width}x{height} = {width * height:,} pixels; the cap is {max_pixels:,}.",
        )
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise ImageError(
            "bad_aspect_ratio",
            f"The image is {width}x{height}; its long side may be at most {MAX_ASPECT_RATIO}x its short side.",
        )


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
        with _opened(fp, max_pixels) as image:
            return _decode(image, draft_size)
    finally:
        if isinstance(source, str | Path):
            fp.close()


def probe(data: bytes, max_pixels: int = MAX_PIXELS) -> ImageHeader:
    """The header of ``data`` (no pixels decoded); raises the :class:`ImageError` that :func:`load_image` would
    raise for a bad header, so a caller can refuse or budget an upload before decoding it."""
    if not data:
        raise ImageError("empty_image", "The upload is empty (0 bytes).")
    with _opened(io.BytesIO(data), max_pixels) as image:
        orientation = _guarded(lambda: int(image.getexif().get(EXIF_ORIENTATION, 1)))
        return ImageHeader(str(image.format), image.mode, image.width, image.height, orientation)


@contextmanager
def _opened(fp: BinaryIO, max_pixels: int) -> Iterator[Image.Image]:
    """``Image.open`` with the allow-list and the geometry check, its errors mapped to :class:`ImageError`."""
    if not fp.read(1):
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
            raise ImageError("image_too_large", f"The image has too many pixels (cap {max_pixels:,}).") from exc
        except OSError as exc:
            raise ImageError("corrupt_image", f"The image could not be read: {exc}") from exc
        except Exception as exc:  # e.g. ValueError from a PNG text chunk that inflates past Pillow's limit
            raise _corrupt(exc) from exc
        check_geometry(image.width, image.height, max_pixels)
        yield image


def _decode(image: Image.Image, draft_size: int | None) -> Image.Image:
    if draft_size is not None and image.format == "JPEG":
        image.draft("RGB", (draft_size, draft_size))

    def decode() -> Image.Image:
        image.seek(0)  # animated GIF/WebP: the first frame only
        image.load()
        return to_rgb(ImageOps.exif_transpose(image) or image)

    return _guarded(decode)


def _guarded(step: Callable[[], T]) -> T:
    try:
        return step()
    except ImageError:
        raise
    except MemoryError as exc:
        raise ImageError("image_too_large", "The image could not be decoded within the memory available.") from exc
    except Exception as exc:  # any decoder failure is this image's fault, reported as such
        raise _corrupt(exc) from exc


def _corrupt(exc: Exception) -> ImageError:
    return ImageError("corrupt_image", f"The image could not be decoded: {exc}")


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
