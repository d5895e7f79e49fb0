"""Property-based fuzzing of the image loader (Hypothesis): random bytes, and real JPEG/PNG/GIF/WebP/BMP files
with mutated headers, chunks and sizes, give a decoded 8-bit RGB image within the geometry rules or an
``ImageError``, never anything else, and never more memory than a stated bound.

The campaign runs in a child process that imports only the loader (Pillow and numpy), so its peak resident
memory is the loader's own and can be compared with a bound.
"""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import zlib

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from model.core.images import MAX_ASPECT_RATIO, ImageError, load_image
from tests.conftest import peak_rss_bytes, reset_peak_rss

MAX_PIXELS = 2_000_000  # the campaign's cap: a mutated header may declare any size up to it
EXAMPLES = 600
PEAK_BOUND_MIB = 150  # 2 MP decodes to ~8 MB per copy; a few copies plus Pillow's buffers stay far below


def _encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


def seed_files() -> list[bytes]:
    """Small real files of every allowed format and the awkward variants of each."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8))
    frames = [Image.new("P", (16, 12), c) for c in (1, 2)]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:])
    text = b"Comment\x00\x00" + zlib.compress(b"x" * 2000)
    with_text = _encode(rgb, "PNG")
    with_text = with_text[:33] + _chunk(b"zTXt", text) + with_text[33:]  # after IHDR
    return [
        _encode(rgb, "JPEG", quality=80),
        _encode(rgb, "JPEG", progressive=True),
        _encode(rgb.convert("CMYK"), "JPEG"),
        _encode(rgb, "PNG"),
        _encode(rgb.convert("P"), "PNG", transparency=0),
        _encode(Image.fromarray(rng.integers(0, 65535, (12, 10), dtype=np.uint16)), "PNG"),
        with_text,
        gif.getvalue(),
        _encode(rgb, "WEBP", quality=70),
        _encode(rgb, "BMP"),
    ]


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


SEEDS = seed_files()


PNG_CHUNKS = [b"zTXt", b"iTXt", b"tEXt", b"iCCP", b"eXIf", b"tRNS", b"PLTE", b"pHYs", b"gAMA", b"sRGB", b"acTL"]


@st.composite
def chunk_payload(draw: st.DrawFn) -> bytes:
    """Random bytes, or a keyword and a zlib stream that inflates to up to 2 MB (past Pillow's text limit)."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=64))
    inflated = draw(st.sampled_from([0, 100, 500_000, 1_100_000, 2_000_000]))
    return b"key\x00\x00" + zlib.compress(draw(st.binary(min_size=1, max_size=4)) * inflated, 9)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A seed file with a few edits: overwritten, inserted or deleted bytes, a truncation, a size field (PNG
    IHDR, GIF screen, BMP header) set to a random value, or a well-formed chunk (PNG) or APP segment (JPEG,
    e.g. a random EXIF block) inserted where the decoder parses it."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["overwrite", "insert", "delete", "truncate", "size", "chunk"]))
        at = draw(st.integers(0, len(data) - 1)) if data else 0
        if kind == "overwrite" and data:
            data[at] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 16))]
        elif kind == "truncate":
            del data[at:]
        elif kind == "size":
            offset = {b"\x89P": 16, b"GI": 6, b"BM": 18}.get(bytes(data[:2]))
            if offset is not None and len(data) >= offset + 8:
                fmt, size = (">II", 8) if offset == 16 else ("<HH", 4) if offset == 6 else ("<ii", 8)
                top = 2**31 - 1 if size == 8 else 2**16 - 1
                w, h = draw(st.integers(0, top)), draw(st.integers(0, top))
                data[offset : offset + size] = struct.pack(fmt, w, h)
        elif data[:2] == b"\x89P":  # a chunk after IHDR (8 + 25 bytes), with a valid CRC
            data[33:33] = _chunk(draw(st.sampled_from(PNG_CHUNKS)), draw(chunk_payload()))
        elif data[:2] == b"\xff\xd8":  # an APP1 (EXIF) or APP2 (ICC) segment right after SOI
            marker = draw(st.sampled_from([b"\xff\xe1Exif\x00\x00", b"\xff\xe2ICC_PROFILE\x00"]))
            body = marker[2:] + draw(st.sampled_from([b"MM\x00*", b"II*\x00", b""])) + draw(st.binary(max_size=200))
            data[2:2] = marker[:2] + struct.pack(">H", len(body) + 2) + body
    return bytes(data)


# Derandomised: the same examples in every run, so CI is reproducible; raise EXAMPLES to search further.
@settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None, derandomize=True
)
@given(st.one_of(st.binary(max_size=2048), mutated(), mutated()))
def loader_never_raises_anything_else(data: bytes) -> None:
    try:
        image = load_image(data, draft_size=64, max_pixels=MAX_PIXELS)
    except ImageError as exc:
        assert exc.code in {"empty_image", "unsupported_format", "image_too_large", "corrupt_image", "bad_aspect_ratio"}
        return
    w, h = image.size
    assert image.mode == "RGB" and 0 < w * h <= MAX_PIXELS and max(w, h) <= MAX_ASPECT_RATIO * min(w, h)
    assert len(image.tobytes()) == 3 * w * h


def campaign() -> None:
    """The child's side: run every example, then print the peak resident memory it took beyond the start."""
    reset_peak_rss()
    start = peak_rss_bytes()
    loader_never_raises_anything_else()
    print(json.dumps({"start_mib": start / 2**20, "grown_mib": (peak_rss_bytes() - start) / 2**20}))


def test_loader_gives_an_image_or_image_error_within_a_memory_bound() -> None:
    child = subprocess.run(
        [sys.executable, "-c", "from tests.test_image_fuzz import campaign; campaign()"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert child.returncode == 0, child.stderr[-4000:]
    report = json.loads(child.stdout.strip().splitlines()[-1])
    assert report["grown_mib"] < PEAK_BOUND_MIB, report


def test_seed_files_are_valid_images_of_every_allowed_format() -> None:
    """The mutations start from real files (else the campaign would only fuzz the format sniffing)."""
    formats = {Image.open(io.BytesIO(s)).format for s in SEEDS}
    assert formats == {"JPEG", "PNG", "GIF", "WEBP", "BMP"}
    assert all(load_image(s).mode == "RGB" for s in SEEDS)
