"""The shared loader against every bad-input case of shared/docs/RELIABILITY.md."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from model.core.images import MAX_PIXELS, ImageError, load_image


def encode(image: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A 65-byte PNG whose header declares ``width`` x ``height``: a decompression bomb's calling card."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"", "empty_image"),
        (b"hello, this is text", "unsupported_format"),
        (b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"></svg>', "unsupported_format"),
        (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n", "unsupported_format"),
        (png_header(30000, 30000), "image_too_large"),
    ],
    ids=["empty", "text", "svg", "pdf", "png-bomb-header"],
)
def test_bad_bytes_get_stable_codes(data: bytes, code: str) -> None:
    with pytest.raises(ImageError) as info:
        load_image(data)
    assert info.value.code == code


def test_pixel_cap_is_ours_not_pillows() -> None:
    image = Image.new("RGB", (200, 100))
    with pytest.raises(ImageError) as info:
        load_image(encode(image, "PNG"), max_pixels=200 * 100 - 1)
    assert info.value.code == "image_too_large"
    assert load_image(encode(image, "PNG"), max_pixels=200 * 100).size == (200, 100)
    assert MAX_PIXELS < Image.MAX_IMAGE_PIXELS * 2


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_file_is_corrupt(fmt: str) -> None:
    rng = np.random.default_rng(0)
    data = encode(Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)), fmt)
    with pytest.raises(ImageError) as info:
        load_image(data[: len(data) // 2])
    assert info.value.code == "corrupt_image"


def test_one_pixel_image_loads() -> None:
    assert load_image(encode(Image.new("RGB", (1, 1), (9, 8, 7)), "PNG")).getpixel((0, 0)) == (9, 8, 7)


def test_sixteen_bit_png_is_scaled_not_clamped_white() -> None:
    array = np.full((4, 4), 32768, dtype=np.uint16)  # mid-grey in 16 bits
    image = load_image(encode(Image.fromarray(array), "PNG"))
    assert image.mode == "RGB"
    assert image.getpixel((0, 0)) == (128, 128, 128)


@pytest.mark.parametrize("mode", ["CMYK", "L", "LA", "RGBA", "1"])
def test_any_mode_becomes_rgb(mode: str) -> None:
    image = Image.new(mode, (8, 8))
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    assert load_image(encode(image, fmt)).mode == "RGB"


def test_palette_transparency_is_composited_on_white() -> None:
    image = Image.new("P", (4, 4), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.putpixel((1, 1), 1)
    out = load_image(encode(image, "PNG", transparency=0))
    assert out.getpixel((0, 0)) == (255, 255, 255)  # transparent black -> white background
    assert out.getpixel((1, 1)) == (255, 0, 0)


def test_animated_gif_gives_its_first_frame() -> None:
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    r, _, b = load_image(buf.getvalue()).getpixel((4, 4))
    assert r > 200 and b < 50


def test_exif_orientation_is_applied() -> None:
    image = Image.new("RGB", (40, 20), (0, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    assert load_image(encode(image, "JPEG", exif=exif.tobytes())).size == (20, 40)


def test_jpeg_draft_decodes_smaller_but_not_below_the_target() -> None:
    data = encode(Image.new("RGB", (1600, 1200), (10, 200, 30)), "JPEG")
    full = load_image(data)
    drafted = load_image(data, draft_size=256)
    assert full.size == (1600, 1200)
    assert drafted.size == (400, 300)  # scale 1/4: the smallest that keeps both sides >= 256


def test_file_paths_and_streams_load_alike(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "x.png"
    Image.new("RGB", (5, 3), (1, 2, 3)).save(path)
    with open(path, "rb") as f:
        assert load_image(f).tobytes() == load_image(path).tobytes() == load_image(path.read_bytes()).tobytes()
