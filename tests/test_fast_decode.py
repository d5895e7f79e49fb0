"""The threaded decode pipeline: same tensors as the eval preset, input order kept, bad files reported."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from model.core.images import ImageError, load_image
from model.core.presets import EvalPreset
from model.inference.decode import decode_batch, decode_tensor, iter_batches, plain_jpeg
from model.inference.embedder import Embedder
from model.inference.gpu_decode import decode_batch_cuda


@pytest.fixture
def mixed_files(synthetic_gallery: Path, tmp_path: Path) -> list[Path]:
    """PNGs and JPEGs of several sizes, one rotated by EXIF, one corrupt and one missing."""
    pngs = sorted(synthetic_gallery.rglob("*.png"))[:9]
    out = list(pngs)
    for k, png in enumerate(pngs[:4]):
        jpg = tmp_path / f"photo_{k}.jpg"
        Image.open(png).resize((90 + 7 * k, 70)).save(jpg, quality=92)
        out.insert(2 * k + 1, jpg)
    rotated = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    Image.open(pngs[0]).resize((96, 64)).save(rotated, exif=exif)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 40)
    return [*out[:3], rotated, corrupt, *out[3:], tmp_path / "missing.png"]


def preset_reference(files: list[Path], preset: EvalPreset) -> dict[int, torch.Tensor]:
    ref = {}
    for i, f in enumerate(files):
        try:
            ref[i] = preset(load_image(f, draft_size=preset.resize_size))
        except (ValueError, OSError):
            continue
    return ref


@pytest.mark.parametrize(("batch_size", "workers"), [(4, 0), (5, 2), (64, 3)])
def test_batches_equal_the_eval_preset_in_input_order(mixed_files: list[Path], batch_size: int, workers: int) -> None:
    preset = EvalPreset(48)
    ref = preset_reference(mixed_files, preset)
    batches = list(iter_batches(mixed_files, preset, batch_size, workers, prefetch=1, chunk=3))
    ok = [i for b in batches for i in b.ok]
    failures = {i: e for b in batches for i, e in b.failures.items()}
    assert ok == sorted(ref) and len(ok) == len(mixed_files) - 2
    assert set(failures) == {4, len(mixed_files) - 1}
    assert "corrupt" in failures[4].lower() or "ImageError" in failures[4]
    images = torch.cat([b.images for b in batches])
    torch.testing.assert_close(images, torch.stack([ref[i] for i in ok]), atol=1e-6, rtol=0)


def test_gpu_decoder_path_agrees_with_the_cpu_path(mixed_files: list[Path]) -> None:
    """Runs the GPU decoder's code on the CPU: JPEGs through decode_jpeg, the rest through load_image."""
    preset = EvalPreset(48)
    assert plain_jpeg(mixed_files[1].read_bytes()) == (90, 70)
    assert plain_jpeg(mixed_files[3].read_bytes()) is None  # EXIF-rotated: load_image applies it
    assert plain_jpeg(mixed_files[0].read_bytes()) is None  # PNG
    got = decode_batch_cuda(mixed_files, 10, preset, torch.device("cpu"))
    want = decode_batch(mixed_files, 10, preset)
    assert got.ok == want.ok and set(got.failures) == set(want.failures) == {14, 10 + len(mixed_files) - 1}
    # libjpeg in torchvision and in Pillow may round the IDCT differently: a grey level or two at most.
    assert (got.images - want.images).abs().max() <= 3 / 255 / 0.224


@pytest.mark.parametrize(("engine", "workers"), [("torch", 2), ("torch", 0), ("onnx", 3), ("onnx", None)])
def test_embed_files_reports_failures_and_matches_embed_images(
    tiny_checkpoint: Path, mixed_files: list[Path], engine: str, workers: int | None
) -> None:
    """Both designs (decoder threads ahead of the model; ONNX workers that decode and run the model) keep the
    input order, report the bad files and give the reference embeddings."""
    embedder = Embedder(tiny_checkpoint, device="cpu", engine=engine)
    result = embedder.embed_files(mixed_files, batch_size=4, num_workers=workers, progress=False)
    assert set(result.failures) == {4, len(mixed_files) - 1}
    assert result.ok == [i for i in range(len(mixed_files)) if i not in result.failures]
    images = [load_image(mixed_files[i], draft_size=embedder.preset.resize_size) for i in result.ok]
    reference = Embedder(tiny_checkpoint, device="cpu", engine="torch").embed_images(images)
    np.testing.assert_allclose(result.embeddings, reference, atol=1e-4)
    assert embedder.embed_files([], progress=False).embeddings.shape == (0, embedder.dim)


def test_plain_jpeg_refuses_what_load_image_handles_specially() -> None:
    buf = io.BytesIO()
    Image.new("CMYK", (16, 16)).save(buf, format="JPEG")
    assert plain_jpeg(buf.getvalue()) is None
    assert plain_jpeg(b"GIF89a not really") is None
    assert plain_jpeg(b"") is None
    big = io.BytesIO()
    Image.new("RGB", (40, 30)).save(big, format="JPEG")
    assert plain_jpeg(big.getvalue(), max_pixels=1000) is None  # over the pixel cap


@pytest.mark.parametrize("draft_size", [None, 32, 200])
def test_decode_tensor_equals_load_image(mixed_files: list[Path], tmp_path: Path, draft_size: int | None) -> None:
    """Whichever decoder runs (torchvision for plain JPEGs that draft keeps whole, Pillow otherwise), the
    pixels are load_image's; errors are load_image's too."""
    large = tmp_path / "large.jpg"
    # draft 32 shrinks it (Pillow decodes it); with 200 or None it stays whole (torchvision decodes it)
    Image.open(mixed_files[1]).resize((300, 240)).save(large, quality=90)
    grey = tmp_path / "grey.jpg"
    Image.open(mixed_files[1]).convert("L").save(grey)
    for path in [*mixed_files[:4], large, grey]:
        want = TF.pil_to_tensor(load_image(path, draft_size=draft_size))
        torch.testing.assert_close(decode_tensor(path.read_bytes(), draft_size=draft_size), want, atol=0, rtol=0)
    with pytest.raises(ImageError):
        decode_tensor(mixed_files[4].read_bytes())  # the corrupt one
    whole = large.read_bytes()
    for cut in (len(whole) // 2, len(whole) - 2):  # truncated: the header says "plain JPEG", the data fails
        with pytest.raises(ImageError) as err:
            decode_tensor(whole[:cut], draft_size=draft_size)
        assert err.value.code == "corrupt_image"
