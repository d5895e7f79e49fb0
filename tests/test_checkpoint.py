from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from model.core.checkpoint import Checkpoint, content_hash, load_checkpoint, save_checkpoint
from model.core.network import ModelConfig, SiameseNetwork


def test_round_trip_rebuilds_the_identical_network(tiny_checkpoint: Path, tiny_model: SiameseNetwork) -> None:
    loaded = load_checkpoint(tiny_checkpoint)
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded.model.embed(x), tiny_model.embed(x))
    assert loaded.class_names == ["blue_triangles", "green_squares", "red_circles", "yellow_bars"]
    assert loaded.threshold == 0.5
    assert loaded.config == tiny_model.config


def test_content_hash_follows_the_weights(tmp_path: Path, tiny_model: SiameseNetwork) -> None:
    h1 = save_checkpoint(Checkpoint(tiny_model), tmp_path / "a.pt")
    h2 = save_checkpoint(Checkpoint(tiny_model, threshold=0.9), tmp_path / "b.pt")
    assert h1 == h2 == load_checkpoint(tmp_path / "a.pt").hash  # metadata does not change the model's identity
    with torch.no_grad():
        tiny_model.head.project.weight[0, 0] += 1e-3
    assert save_checkpoint(Checkpoint(tiny_model), tmp_path / "c.pt") != h1


def test_damaged_or_missing_checkpoint_fails_clearly(tmp_path: Path, tiny_checkpoint: Path) -> None:
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(tiny_checkpoint.read_bytes()[:1000])
    with pytest.raises(ValueError, match="damaged"):
        load_checkpoint(damaged)
    with pytest.raises(FileNotFoundError, match="imgsim train"):
        load_checkpoint(tmp_path / "missing.pt")


def test_checkpoint_of_another_architecture_fails_clearly(tmp_path: Path, tiny_checkpoint: Path) -> None:
    payload = torch.load(tiny_checkpoint, weights_only=True)
    del payload["model"]["head.anchor_mean"]
    torch.save(payload, tmp_path / "old.pt")
    with pytest.raises(ValueError, match="incompatible version of imgsim"):
        load_checkpoint(tmp_path / "old.pt")
    payload["model_args"]["layers"] = 3
    torch.save(payload, tmp_path / "unknown.pt")
    with pytest.raises(ValueError, match="Train it again"):
        load_checkpoint(tmp_path / "unknown.pt")


def test_save_leaves_no_temporary_files(tmp_path: Path, tiny_model: SiameseNetwork) -> None:
    save_checkpoint(Checkpoint(tiny_model), tmp_path / "best.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["best.pt"]


def test_a_checkpoint_from_before_input_norm_keeps_its_behaviour_and_its_hash(tmp_path: Path) -> None:
    """Checkpoints that do not name ``input_norm`` were trained on ImageNet-normalised input: they load as
    ``imagenet``, embed exactly as before, and keep the content hash their index and ONNX cache are keyed by."""
    torch.manual_seed(0)
    config = ModelConfig(embedding_dim=16, hidden_dim=32, image_size=64, pretrained=False)  # efficientnet-lite0
    model = SiameseNetwork(config).eval()
    save_checkpoint(Checkpoint(model), tmp_path / "new.pt")
    payload = torch.load(tmp_path / "new.pt", weights_only=True)
    assert payload["model_args"]["input_norm"] == "native"
    del payload["model_args"]["input_norm"]  # as written before the option existed
    payload["content_hash"] = content_hash(payload["model_args"], payload["model"])
    torch.save(payload, tmp_path / "old.pt")

    old = load_checkpoint(tmp_path / "old.pt")
    assert old.config.input_norm == "imagenet" and old.model.backbone.input_norm == "imagenet"
    assert "input_norm" not in old.config.to_dict()
    assert save_checkpoint(old, tmp_path / "resaved.pt") == payload["content_hash"]
    legacy = SiameseNetwork(dataclasses.replace(config, input_norm="imagenet")).eval()
    legacy.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(old.model.embed(x), legacy.embed(x))
        assert not torch.allclose(old.model.embed(x), model.embed(x))  # the native scaling does change it
