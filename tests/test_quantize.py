"""int8 engines: quantised once with calibration photos, cached with a record, verified against fp32, and chosen
by precision auto only where that works; galleries record the precision and refuse other numerics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import model.inference.quantize as quantize
from app.service import load_embedder, open_index
from app.settings import Settings
from index import GalleryIndex, IndexMismatchError
from index.build import build_gallery_index, make_embedder, update_gallery_index
from index.gallery import recorded_precision
from model.core.checkpoint import load_checkpoint
from model.inference.embedder import Embedder
from model.inference.engines import OnnxEngine, precision_for_gallery
from model.inference.quantize import QuantizationError, int8_path


def photos(gallery: Path) -> list[Path]:
    return sorted(gallery.glob("*/*.png"))


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture
def count_quantize(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    calls: list[Path] = []
    real = quantize.quantize_onnx

    def counting(fp32: Path, out: Path, images: list[Path], size: int) -> None:
        calls.append(fp32)
        real(fp32, out, images, size)

    monkeypatch.setattr(quantize, "quantize_onnx", counting)
    return calls


def test_int8_is_quantised_once_cached_with_its_record_and_close_to_fp32(
    tiny_checkpoint: Path, synthetic_gallery: Path, count_quantize: list[Path]
) -> None:
    files = photos(synthetic_gallery)
    int8 = Embedder(tiny_checkpoint, device="cpu", precision="int8", calibration_images=files)
    fp32 = Embedder(tiny_checkpoint, device="cpu", precision="fp32")
    assert (int8.precision, fp32.precision) == ("int8", "fp32") and int8.engine.name == "onnx"
    assert isinstance(int8.engine, OnnxEngine) and isinstance(fp32.engine, OnnxEngine)
    path = int8.engine.path
    assert path == int8_path(fp32.engine.path) and path.parent == tiny_checkpoint.parent / ".cache"
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # really quantised
    record = json.loads(path.with_suffix(".json").read_text())
    assert record["calibration_photos"] == 39 and record["check_photos"] == 9  # 48 photos: a fifth to verify
    assert record["cosine_to_fp32"]["mean"] >= 0.99
    a, b = int8.embed_files(files, progress=False), fp32.embed_files(files, progress=False)
    assert a.ok == b.ok and cosines(a.embeddings, b.embeddings).mean() >= 0.99
    assert not np.array_equal(a.embeddings, b.embeddings)
    # Cached: the next engine reuses the file (no photos needed now); a damaged file is made again.
    again = Embedder(tiny_checkpoint, device="cpu", precision="int8")
    assert count_quantize == [fp32.engine.path]
    assert np.array_equal(again.embed_files(files, progress=False).embeddings, a.embeddings)
    assert Embedder(tiny_checkpoint, device="cpu").precision == "int8"  # auto: the cached int8 model
    path.write_bytes(path.read_bytes()[:-10])
    Embedder(tiny_checkpoint, device="cpu", precision="int8", calibration_images=files)
    assert len(count_quantize) == 2


def test_int8_needs_calibration_photos_and_auto_needs_them_too(tiny_checkpoint: Path, tmp_path: Path) -> None:
    assert Embedder(tiny_checkpoint, device="cpu").precision == "fp32"  # names no training photos: auto is fp32
    with pytest.raises(QuantizationError, match="only 0 of the 0 it names are readable"):
        Embedder(tiny_checkpoint, device="cpu", precision="int8")
    with pytest.raises(ValueError, match="int8 runs on ONNX Runtime"):
        Embedder(tiny_checkpoint, device="cpu", engine="torch", precision="int8")


def test_a_rejected_int8_model_is_recorded_and_auto_settles_on_fp32(
    tiny_checkpoint: Path, synthetic_gallery: Path, monkeypatch: pytest.MonkeyPatch, count_quantize: list[Path]
) -> None:
    monkeypatch.setattr(quantize, "MIN_MEAN_COSINE", 1.01)  # no int8 model can pass
    files = photos(synthetic_gallery)
    auto = Embedder(tiny_checkpoint, device="cpu", calibration_images=files)
    assert auto.precision == "fp32" and len(count_quantize) == 1
    assert Embedder(tiny_checkpoint, device="cpu", calibration_images=files).precision == "fp32"
    assert len(count_quantize) == 1  # the refusal is recorded: auto does not try again
    with pytest.raises(QuantizationError, match="strays from fp32"):
        Embedder(tiny_checkpoint, device="cpu", precision="int8", calibration_images=files)


def test_a_trained_checkpoint_calibrates_with_its_own_training_photos(
    tiny_checkpoint: Path, synthetic_gallery: Path
) -> None:
    ckpt = load_checkpoint(tiny_checkpoint)
    ckpt.train_args["data"] = str(synthetic_gallery)
    named = photos(synthetic_gallery)[:20]
    ckpt.splits["train"] = [[p.relative_to(synthetic_gallery).as_posix(), p.parent.name] for p in named]
    engine = OnnxEngine(ckpt)  # precision auto
    assert engine.precision == "int8"
    assert json.loads(engine.path.with_suffix(".json").read_text())["calibration_photos"] == 16


def test_galleries_record_the_precision_and_refuse_other_numerics(
    tiny_checkpoint: Path, synthetic_gallery: Path, tmp_path: Path
) -> None:
    files = photos(synthetic_gallery)
    Embedder(tiny_checkpoint, device="cpu", precision="int8", calibration_images=files)  # cached for what follows
    index_dir = tmp_path / "index"
    build_gallery_index(tiny_checkpoint, synthetic_gallery, index_dir, device="cpu", progress=False, precision="fp32")
    assert recorded_precision(index_dir) == "fp32" and recorded_precision(tmp_path / "none") is None
    int8_dir = tmp_path / "index8"
    build_gallery_index(tiny_checkpoint, synthetic_gallery, int8_dir, device="cpu", progress=False)  # auto: int8
    gi = GalleryIndex.open(int8_dir)
    assert gi.precision == "int8" and gi.info()["precision"] == "int8"
    # auto follows the gallery: int8 stays int8, float stays float.
    assert make_embedder(tiny_checkpoint, "cpu", index_dir=int8_dir).precision == "int8"
    assert make_embedder(tiny_checkpoint, "cpu", index_dir=index_dir).precision == "fp32"
    assert precision_for_gallery("fp16", torch.device("cpu")) == "fp32"
    assert precision_for_gallery("fp16", torch.device("cuda")) == "fp16"
    assert precision_for_gallery(None, torch.device("cpu")) == "auto"
    with pytest.raises(IndexMismatchError, match="holds int8 embeddings; this embedder computes in fp32"):
        update_gallery_index(
            tiny_checkpoint, synthetic_gallery, int8_dir, device="cpu", progress=False, precision="fp32"
        )
    with pytest.raises(IndexMismatchError, match="holds fp32 embeddings"):
        GalleryIndex.open(index_dir, precision="int8")
    GalleryIndex.open(index_dir, precision="fp16")  # float numerics agree: accepted
    # A change goes through the log, and the compaction that folds it into a new base keeps the precision.
    base, count = gi.base_version, gi.count
    assert gi.remove([0]) == [0]
    assert gi.compact() > base
    gi.close()
    assert recorded_precision(int8_dir) == "int8"
    with pytest.raises(IndexMismatchError, match="holds int8 embeddings"):
        GalleryIndex.open(int8_dir, precision="fp32")
    # The service: precision auto follows the gallery; an explicit other one is refused at startup.
    settings = Settings(checkpoint=tiny_checkpoint, index=int8_dir, device="cpu", _env_file=None)  # type: ignore[call-arg]
    embedder = load_embedder(settings)
    served = open_index(settings, embedder)
    assert embedder.precision == "int8" and served.count == count - 1 and served.precision == "int8"
    served.close()
    fp32 = load_embedder(settings.model_copy(update={"precision": "fp32"}))
    with pytest.raises(IndexMismatchError, match="Embed with precision int8"):
        open_index(settings, fp32)
    # A gallery the service creates records the serving embedder's precision.
    fresh = settings.model_copy(update={"index": tmp_path / "fresh"})
    open_index(fresh, fp32).close()
    assert recorded_precision(tmp_path / "fresh") == "fp32"
