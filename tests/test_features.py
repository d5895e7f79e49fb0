"""Backbone features: ONNX Runtime on the CPU gives PyTorch's numbers, in order, and falls back cleanly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model.core.backbones import build_backbone
from model.core.images import ImageError
from model.data.galleries import Item, scan_gallery
from model.inference import onnx_features as fast_features
from model.inference.features import compute_features
from tests.conftest import TINY_CONFIG


def torch_features(
    backbone: torch.nn.Module, root: Path, items: list[Item], monkeypatch: pytest.MonkeyPatch
) -> torch.Tensor:
    with monkeypatch.context() as m:
        m.setattr("model.inference.features.onnx_features", lambda *a, **k: None)
        return compute_features(backbone, root, items, image_size=TINY_CONFIG["image_size"], progress=False)


def test_onnx_features_equal_pytorch_in_order(synthetic_gallery: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    backbone = build_backbone("seed-cnn", pretrained=False).eval()
    gallery = scan_gallery(synthetic_gallery)
    items = gallery.items[::-1]  # not the folder order: rows must follow the items
    size = TINY_CONFIG["image_size"]
    assert fast_features.onnx_features(backbone, size) is not None
    fast = compute_features(backbone, gallery.root, items, image_size=size, progress=False)
    reference = torch_features(backbone, gallery.root, items, monkeypatch)
    assert fast.shape == reference.shape == (len(items), backbone.feature_dim)
    torch.testing.assert_close(fast, reference, atol=1e-4, rtol=1e-4)


def test_unreadable_image_raises_and_export_failure_falls_back(
    synthetic_gallery: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(1)
    backbone = build_backbone("seed-cnn", pretrained=False).eval()
    gallery = scan_gallery(synthetic_gallery)
    size = TINY_CONFIG["image_size"]
    broken = gallery.root / gallery.items[0].path
    broken.write_bytes(b"\xff\xd8\xff\xe0 not a whole jpeg")
    with pytest.raises(ImageError, match=broken.name):
        compute_features(backbone, gallery.root, gallery.items[:3], image_size=size, progress=False)

    def failing_export(*args: object, **kwargs: object) -> None:
        raise RuntimeError("no exporter here")

    torch.manual_seed(2)
    other = build_backbone("seed-cnn", pretrained=False).eval()  # new weights: not exported yet
    monkeypatch.setattr(torch.onnx, "export", failing_export)
    assert fast_features.onnx_features(other, size) is None
    items = gallery.items[1:4]
    got = compute_features(other, gallery.root, items, image_size=size, progress=False)
    torch.testing.assert_close(got, torch_features(other, gallery.root, items, monkeypatch))
