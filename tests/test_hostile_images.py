"""Issue 15, items 1 and 2 at the model's level: every decode path refuses the same images with the same code,
and whatever a decoder raises on one bad file is that file's ``ImageError``, never another exception."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench.hostile import grey_png, jpeg, png_header, wide_png, ztxt_bomb
from index import build_gallery_index
from model.core.images import MAX_ASPECT_RATIO, ImageError, check_geometry, load_image, probe
from model.core.presets import EvalPreset
from model.inference.decode import decode_batch, decode_tensor, plain_jpeg
from model.inference.embedder import Embedder
from model.inference.gpu_decode import decode_batch_cuda
from tests.conftest import draw_shape, peak_rss_bytes, reset_peak_rss


def refusal(data: bytes) -> ImageError:
    with pytest.raises(ImageError) as info:
        load_image(data, draft_size=256)
    return info.value


@pytest.mark.parametrize(("width", "height"), [(4000, 1), (1, 4000), (40_000_000, 1), (2000, 150)])
def test_very_wide_or_tall_images_are_refused_from_the_header(width: int, height: int) -> None:
    # A header with no pixel data: refused for its shape, so the check runs before anything is decoded.
    err = refusal(png_header(width, height))
    assert err.code == "bad_aspect_ratio"
    assert err.detail == (
        f"The image is {width}x{height}; its long side may be at most {MAX_ASPECT_RATIO}x its short side."
    )
    with pytest.raises(ImageError) as info:
        probe(png_header(width, height))
    assert (info.value.code, info.value.detail) == (err.code, err.detail)


def test_the_aspect_cap_is_inclusive_and_symmetric() -> None:
    for w, h in ((MAX_ASPECT_RATIO, 1), (1, MAX_ASPECT_RATIO), (MAX_ASPECT_RATIO * 30, 30)):
        check_geometry(w, h)
        assert load_image(grey_png(w, h)).size == (w, h)
    for w, h in ((MAX_ASPECT_RATIO + 1, 1), (1, MAX_ASPECT_RATIO + 1), (MAX_ASPECT_RATIO * 30 + 1, 30)):
        with pytest.raises(ImageError, match="long side"):
            check_geometry(w, h)


def test_a_wide_image_costs_no_memory_to_refuse() -> None:
    """The 85-byte 4000x1 PNG of the issue: before the fix, decoding and cropping it took ~0.8 GB."""
    preset = EvalPreset(224)
    reset_peak_rss()
    before = peak_rss_bytes()
    with pytest.raises(ImageError) as info:
        preset.crop(decode_tensor(wide_png(), draft_size=preset.resize_size))
    assert info.value.code == "bad_aspect_ratio" and peak_rss_bytes() - before < 50 * 2**20


@pytest.fixture
def wide_files(tmp_path: Path) -> list[Path]:
    """A wide PNG, a wide plain JPEG (the torchvision and nvJPEG fast paths' kind of file) and a good JPEG."""
    rng = np.random.default_rng(0)
    files = [tmp_path / "wide.png", tmp_path / "wide.jpg", tmp_path / "good.jpg"]
    files[0].write_bytes(wide_png())
    files[1].write_bytes(jpeg(draw_shape("red_circles", rng).resize((880, 80))))
    files[2].write_bytes(jpeg(draw_shape("red_circles", rng)))
    return files


def test_every_decode_path_refuses_the_same_images_with_the_same_code(wide_files: list[Path]) -> None:
    preset = EvalPreset(48)
    wide_jpeg = wide_files[1].read_bytes()
    assert plain_jpeg(wide_jpeg) is None  # the fast paths leave it to load_image, which refuses it
    with pytest.raises(ImageError, match="long side"):
        decode_tensor(wide_jpeg, draft_size=preset.resize_size)
    for decoded in (decode_batch(wide_files, 0, preset), decode_batch_cuda(wide_files, 0, preset, torch.device("cpu"))):
        assert decoded.ok == [2] and set(decoded.failures) == {0, 1}
        assert all("long side may be at most" in reason for reason in decoded.failures.values())


@pytest.mark.parametrize("engine", ["torch", "onnx"])
def test_embedding_and_index_builds_skip_wide_images(
    tiny_checkpoint: Path, wide_files: list[Path], tmp_path: Path, engine: str
) -> None:
    embedder = Embedder(tiny_checkpoint, device="cpu", engine=engine)
    result = embedder.embed_files(wide_files, batch_size=2, progress=False)
    assert result.ok == [2] and set(result.failures) == {0, 1}
    gallery = tmp_path / "gallery" / "dogs"
    gallery.mkdir(parents=True)
    for f in wide_files:
        (gallery / f.name).write_bytes(f.read_bytes())
    report = build_gallery_index(embedder, gallery.parent, tmp_path / "idx", progress=False)
    assert report.count == 1
    assert sorted(report.skipped) == ["dogs/wide.jpg", "dogs/wide.png"]
    assert all("long side may be at most" in why for why in report.skipped.values())


def test_a_png_text_chunk_past_pillows_limit_is_a_corrupt_image() -> None:
    """Pillow raises ValueError (not OSError) for it; before the fix it escaped load_image."""
    err = refusal(ztxt_bomb())
    assert err.code == "corrupt_image" and "MAX_TEXT_CHUNK" in err.detail
    with pytest.raises(ImageError):
        decode_tensor(ztxt_bomb(), draft_size=256)
    with pytest.raises(ImageError):
        probe(ztxt_bomb())


def test_any_decoder_exception_becomes_an_image_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever a plugin raises while decoding (here: a TypeError) is the file's corrupt_image."""
    data = grey_png(8, 8)

    def broken_load(self: Image.Image) -> None:
        raise TypeError("a decoder bug")

    monkeypatch.setattr(Image.Image, "load", broken_load)
    monkeypatch.setattr("PIL.ImageFile.ImageFile.load", broken_load)
    err = refusal(data)
    assert (err.code, err.detail) == ("corrupt_image", "The image could not be decoded: a decoder bug")


def test_header_estimates_follow_the_draft_scale() -> None:
    photo = jpeg(Image.new("RGB", (1600, 1200), (10, 200, 30)))
    header = probe(photo)
    assert (header.format, header.mode, header.width, header.height) == ("JPEG", "RGB", 1600, 1200)
    assert header.decoded_size(256) == load_image(photo, draft_size=256).size == (400, 300)
    assert header.decoded_size(None) == (1600, 1200)
    assert header.decode_bytes(256) == 400 * 300 * (4 + 7)
    png = probe(grey_png(300, 200))
    assert png.decoded_size(64) == (300, 200) and png.decode_bytes(64) == 300 * 200 * (1 + 4 + 7)


PEAK_SCRIPT = """
import io, json, sys
import numpy as np
from PIL import Image
from model.core.images import probe
from model.inference.decode import decode_tensor
from tests.conftest import peak_rss_bytes, reset_peak_rss
mode = sys.argv[1]
w, h = 3000, 2400
image = Image.fromarray(np.full((h, w), 300, np.uint16)) if mode == "I;16" else Image.new(mode, (w, h))
out = io.BytesIO()
image.save(out, format="PNG")
data = out.getvalue()
del image, out
reset_peak_rss()
before = peak_rss_bytes()
header = probe(data)
tensor = decode_tensor(data, 256, header=header)
grown = peak_rss_bytes() - before
print(json.dumps({"mode": header.mode, "estimate": header.decode_bytes(256), "measured": grown}))
"""


@pytest.mark.parametrize("mode", ["1", "L", "P", "RGB", "RGBA", "LA", "I;16"])
def test_decode_estimates_cover_the_measured_peak(mode: str) -> None:
    """The memory budget of the service reserves ``decode_bytes``: it must not be below what decoding takes.
    Measured in a fresh process (peak resident memory grown by the decode of a 7.2 MP PNG)."""
    child = subprocess.run(
        [sys.executable, "-c", PEAK_SCRIPT, mode], capture_output=True, text=True, timeout=120, check=True
    )
    report = json.loads(child.stdout)
    assert report["measured"] > 0.2 * report["estimate"]  # the measurement sees the decode at all
    assert report["measured"] <= report["estimate"], report
