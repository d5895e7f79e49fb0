"""Self-describing checkpoints (nanoGPT style): everything needed to rebuild the identical network.

A checkpoint holds the model arguments, the weights, the class names and splits it was trained on, the
calibrated same/different threshold and the Platt coefficients of ``same_probability`` (with how they were
calibrated), its metrics and the library versions, plus ``content_hash``: a sha256
of the architecture and the weights that the index stores and checks, so an index built by another model
is refused.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from model.core.files import atomic_path
from model.core.network import LEGACY_INPUT_NORM, ModelConfig, SiameseNetwork

FORMAT_VERSION = 1


def content_hash(model_args: dict[str, Any], state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 of the architecture and every weight, in key order; the same weights always hash the same."""
    digest = hashlib.sha256(json.dumps(model_args, sort_keys=True).encode())
    for key in sorted(state_dict):
        tensor = state_dict[key].detach().cpu().contiguous()
        digest.update(key.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def library_versions() -> dict[str, str]:
    versions = {}
    for name in ("torch", "torchvision", "faiss-cpu", "imgsim"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


@dataclass
class Checkpoint:
    model: SiameseNetwork
    class_names: list[str] = field(default_factory=list)
    threshold: float = 1.0
    platt: tuple[float, float] | None = None  # same_probability = sigmoid(a + b · distance); None: not calibrated
    calibration: dict[str, Any] = field(default_factory=dict)  # how threshold and platt were calibrated
    splits: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    train_args: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # optimizer, scheduler, epoch, step: for --resume
    hash: str = ""
    path: Path | None = None

    @property
    def config(self) -> ModelConfig:
        return self.model.config


def save_checkpoint(ckpt: Checkpoint, path: str | Path) -> str:
    """Write atomically (see :mod:`model.core.files`) and return the content hash."""
    model_args = ckpt.model.config.to_dict()
    state = {k: v.detach().cpu() for k, v in ckpt.model.state_dict().items()}
    ckpt.hash = content_hash(model_args, state)
    payload = {
        "format_version": FORMAT_VERSION,
        "model_args": model_args,
        "model": state,
        "content_hash": ckpt.hash,
        "embedding_dim": ckpt.model.config.embedding_dim,
        "backbone": ckpt.model.config.backbone,
        "class_names": ckpt.class_names,
        "threshold": ckpt.threshold,
        "platt": list(ckpt.platt) if ckpt.platt is not None else None,
        "calibration": ckpt.calibration,
        "splits": ckpt.splits,
        "metrics": ckpt.metrics,
        "train_args": ckpt.train_args,
        "versions": library_versions(),
        **ckpt.extra,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return ckpt.hash


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Rebuild the network from the checkpoint alone, without any backbone download."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint {path} does not exist. Train one with `imgsim train`.")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for a damaged file
        raise ValueError(f"Checkpoint {path} is damaged or not an imgsim checkpoint: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"Checkpoint {path} is not an imgsim checkpoint of format {FORMAT_VERSION}.")
    # A checkpoint that does not name its input scaling predates the option: it was trained on "imagenet".
    model_args = {"input_norm": LEGACY_INPUT_NORM, **payload["model_args"]}
    # The weights come from the file, so the pretrained ones need not be fetched again.
    try:
        config = ModelConfig(**{**model_args, "pretrained": False})
        model = SiameseNetwork(config)
        model.load_state_dict(payload["model"])
    except (TypeError, RuntimeError) as exc:  # unknown model arguments, or weights of another architecture
        raise ValueError(
            f"Checkpoint {path} was written by an incompatible version of imgsim ({exc}). "
            "Train it again with `imgsim train`."
        ) from exc
    model.config = ModelConfig(**model_args)
    model.eval()
    known = {
        "format_version",
        "model_args",
        "model",
        "content_hash",
        "embedding_dim",
        "backbone",
        "class_names",
        "threshold",
        "platt",
        "calibration",
        "splits",
        "metrics",
        "train_args",
        "versions",
    }
    return Checkpoint(
        model=model,
        class_names=list(payload.get("class_names", [])),
        threshold=float(payload.get("threshold", 1.0)),
        platt=_platt(payload.get("platt")),
        calibration=dict(payload.get("calibration") or {}),
        splits=dict(payload.get("splits", {})),
        metrics=dict(payload.get("metrics", {})),
        train_args=dict(payload.get("train_args", {})),
        extra={k: v for k, v in payload.items() if k not in known},
        hash=str(payload["content_hash"]),
        path=path,
    )


def _platt(value: object) -> tuple[float, float] | None:
    if not isinstance(value, list | tuple) or len(value) != 2:
        return None  # absent: a checkpoint from before same_probability
    return float(value[0]), float(value[1])
