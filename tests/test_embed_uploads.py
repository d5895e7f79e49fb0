"""``Embedder.embed_uploads``: raw bytes of many uploads -> unit vectors, the same vectors bit for bit as the
service computed before the embedder owned this (decode, crop, normalise, run), one upload's failure never
failing another."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench.hostile import jpeg, wide_png, ztxt_bomb
from model.core.images import ImageError, load_image
from model.inference.decode import decode_tensor
from model.inference.embedder import Embedder, ModelError
from tests.conftest import draw_shape


def uploads() -> list[bytes]:
    """PNGs and JPEGs of the kinds the service gets: small JPEGs (torchvision's decoder), large ones (Pillow's
    draft), greyscale, CMYK, EXIF-rotated, palette with transparency."""
    rng = np.random.default_rng(1)
    shapes = [draw_shape(label, rng, size=90) for label in ("red_circles", "green_squares", "blue_triangles")]
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = io.BytesIO()
    shapes[1].resize((120, 80)).save(rotated, format="JPEG", exif=exif.tobytes())
    cmyk = io.BytesIO()
    shapes[2].convert("CMYK").save(cmyk, format="JPEG")
    palette = io.BytesIO()
    shapes[0].convert("P").save(palette, format="PNG", transparency=0)
    png = io.BytesIO()
    shapes[0].save(png, format="PNG")
    return [
        png.getvalue(),
        jpeg(shapes[1]),
        jpeg(shapes[2].resize((400, 300))),
        jpeg(shapes[0].convert("L")),
        rotated.getvalue(),
        cmyk.getvalue(),
        palette.getvalue(),
    ]


def previous_service_recipe(embedder: Embedder, datas: list[bytes]) -> np.ndarray:
    """What app/service.py did itself before: decode_tensor at the resize size, crop, one normalise, the engine."""
    preset = embedder.preset
    crops = [preset.crop(decode_tensor(d, draft_size=preset.resize_size)) for d in datas]
    return embedder.engine(preset.normalise(torch.stack(crops)))


@pytest.mark.parametrize("engine", ["torch", "onnx"])
def test_vectors_are_the_previous_ones_bit_for_bit(tiny_checkpoint: Path, engine: str) -> None:
    embedder = Embedder(tiny_checkpoint, device="cpu", engine=engine)
    datas = uploads()
    got = embedder.embed_uploads(datas)
    assert all(isinstance(v, np.ndarray) for v in got)
    np.testing.assert_array_equal(np.stack(got), previous_service_recipe(embedder, datas))  # type: ignore[arg-type]
    crops = [embedder.prepare(d) for d in datas]  # prepared elsewhere (a worker thread), then run: the same
    np.testing.assert_array_equal(np.stack(embedder.embed_uploads(crops)), np.stack(got))  # type: ignore[arg-type]


@pytest.mark.data
def test_dog_photos_embed_as_before(tiny_checkpoint: Path, dogs_dir: Path) -> None:
    photos = [p.read_bytes() for p in sorted(dogs_dir.glob("*/*.jpg"))[::550]]
    embedder = Embedder(tiny_checkpoint, device="cpu", engine="onnx")
    got = np.stack(embedder.embed_uploads(photos))  # type: ignore[arg-type]
    np.testing.assert_array_equal(got, previous_service_recipe(embedder, photos))


def test_one_bad_upload_fails_only_itself(tiny_checkpoint: Path) -> None:
    embedder = Embedder(tiny_checkpoint, device="cpu", engine="torch")
    good = uploads()[:2]
    outcomes = embedder.embed_uploads([good[0], ztxt_bomb(), wide_png(), b"", good[1], b"not an image"])
    codes = [o.code if isinstance(o, ImageError) else "ok" for o in outcomes]
    assert codes == ["ok", "corrupt_image", "bad_aspect_ratio", "empty_image", "ok", "unsupported_format"]
    alone = embedder.embed_uploads(good)
    np.testing.assert_array_equal(outcomes[0], alone[0])  # type: ignore[arg-type]
    np.testing.assert_array_equal(outcomes[4], alone[1])  # type: ignore[arg-type]


def test_a_failed_pass_is_retried_per_upload_so_only_the_culprit_fails(
    tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    embedder = Embedder(tiny_checkpoint, device="cpu", engine="torch")
    real = embedder.engine.__call__
    white = jpeg(Image.new("RGB", (80, 80), (255, 255, 255)))
    culprit = embedder.prepare(white)

    def fails_on_white(batch: torch.Tensor) -> np.ndarray:
        if (embedder.preset.normalise(culprit[None]) == batch).flatten(1).all(1).any():
            raise RuntimeError("kernel failure")
        return real(batch)

    monkeypatch.setattr(embedder, "embed_tensors", fails_on_white)
    good = uploads()[:3]
    outcomes = embedder.embed_uploads([good[0], white, good[1], good[2]])
    assert isinstance(outcomes[1], ModelError) and "kernel failure" in str(outcomes[1])
    for got, data in zip([outcomes[0], outcomes[2], outcomes[3]], good, strict=True):  # retried alone
        np.testing.assert_array_equal(got, embedder.embed_uploads([data])[0])  # type: ignore[arg-type]


def test_a_refused_reservation_is_that_uploads_outcome(tiny_checkpoint: Path) -> None:
    embedder = Embedder(tiny_checkpoint, device="cpu", engine="torch")
    small, large = jpeg(Image.new("RGB", (60, 60))), jpeg(Image.new("RGB", (700, 500)))
    reserved: list[int] = []

    @contextmanager
    def reserve(nbytes: int) -> Iterator[None]:
        if nbytes > 100_000:
            raise MemoryError(f"no room for {nbytes}")
        reserved.append(nbytes)
        yield

    outcomes = embedder.embed_uploads([small, large], reserve=reserve)
    assert isinstance(outcomes[0], np.ndarray) and isinstance(outcomes[1], MemoryError)
    assert reserved == [embedder.decode_cost(embedder.probe(small))] == [60 * 60 * (4 + 7)]


def test_a_decoded_image_gives_the_same_crop_as_its_bytes(tiny_checkpoint: Path) -> None:
    """The gallery's add path decodes once for the stored copy and the model when both see the same pixels."""
    embedder = Embedder(tiny_checkpoint, device="cpu", engine="torch")
    same_scale = 0
    for data in uploads():
        header = embedder.probe(data)
        if header.decoded_size(1024) == header.decoded_size(embedder.draft_size):
            same_scale += 1
            assert torch.equal(embedder.prepare_decoded(load_image(data, draft_size=1024)), embedder.prepare(data))
        else:  # a JPEG that draft decodes at two scales: decoded again at the model's
            assert header.format == "JPEG" and header.width >= 2 * embedder.draft_size
            decoded = load_image(data, draft_size=embedder.draft_size)
            assert torch.equal(embedder.prepare_decoded(decoded), embedder.prepare(data))
    assert same_scale == len(uploads()) - 1


def test_overlapping_passes_run_single_threaded(tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pass alone uses every core; one that overlaps another (two model instances) uses one."""
    embedder = Embedder(tiny_checkpoint, device="cpu", engine="torch")
    calls: list[str] = []
    real = embedder.engine.__call__

    def slow(kind: str) -> object:
        def run(batch: torch.Tensor) -> np.ndarray:
            calls.append(kind)
            time.sleep(0.2)
            return real(batch)

        return run

    monkeypatch.setattr(embedder, "embed_tensors", slow("all cores"))
    monkeypatch.setattr(embedder.engine, "run_single_threaded", slow("one core"))
    data = uploads()[:1]
    first = threading.Thread(target=embedder.embed_uploads, args=(data,))
    first.start()
    time.sleep(0.05)
    embedder.embed_uploads(data)
    first.join()
    embedder.embed_uploads(data)
    assert calls == ["all cores", "one core", "all cores"]
