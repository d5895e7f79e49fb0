"""Hostile uploads, built in memory: what the soak sends and the regression tests of issue 15 check.

Each is small on the wire and was found to hurt the service before it was fixed: a tiny very wide PNG (resizing
its short side allocated gigabytes), a PNG whose text chunk inflates past Pillow's limit (a ``ValueError`` that
failed every request of its batch), a one-bit PNG that is cheap to send and expensive to decode.
"""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header(width: int, height: int) -> bytes:
    """A PNG that only declares its size (8-bit RGB) and holds no pixel data: a decompression bomb's calling card."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return PNG_SIGNATURE + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"")) + png_chunk(b"IEND", b"")


def grey_png(width: int, height: int, extra_chunks: bytes = b"", bit_depth: int = 8) -> bytes:
    """A valid greyscale PNG of one flat shade (compresses to almost nothing), with ``extra_chunks`` before the
    pixel data. ``bit_depth`` 1 gives the one-bit image of the issue (12 KB for 6300x6300)."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)
    row = b"\x00" + b"\x55" * -(-width * bit_depth // 8)  # filter byte, then the packed pixels
    compressor = zlib.compressobj(9)
    pixels = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    chunks = png_chunk(b"IHDR", ihdr) + extra_chunks + png_chunk(b"IDAT", pixels) + png_chunk(b"IEND", b"")
    return PNG_SIGNATURE + chunks


def wide_png(width: int = 4000, height: int = 1) -> bytes:
    """A 4000x1 PNG of 85 bytes: resizing its short side to the model's 256 pixels took 0.8 GB."""
    return grey_png(width, height)


def ztxt_bomb(inflated: int = 2 * 1024 * 1024) -> bytes:
    """An 8x8 PNG whose zTXt chunk inflates to ``inflated`` bytes, past Pillow's ``MAX_TEXT_CHUNK`` (1 MB):
    ``Image.open`` raises ``ValueError``, not ``OSError``."""
    text = png_chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(b"A" * inflated, 9))
    return grey_png(8, 8, text)


def one_bit_png(side: int = 6300) -> bytes:
    """A one-bit PNG of ``side`` x ``side`` pixels: about 12 KB that decode to ``side``² bytes and more."""
    return grey_png(side, side, bit_depth=1)


def truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def jpeg(image: Image.Image, quality: int = 90) -> bytes:
    out = io.BytesIO()
    image.convert("RGB").save(out, format="JPEG", quality=quality)
    return out.getvalue()
