"""Shared fixtures: small synthetic galleries (coloured shapes per class) and a tiny untrained model."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from model.core.checkpoint import Checkpoint, save_checkpoint
from model.core.network import ModelConfig, SiameseNetwork

DOGS = Path(os.environ.get("IMGSIM_TEST_DOGS", Path(__file__).resolve().parents[2] / "shared" / "data" / "dogs"))

SHAPES = {
    "red_circles": ((220, 40, 40), "ellipse"),
    "green_squares": ((40, 200, 60), "rectangle"),
    "blue_triangles": ((40, 60, 220), "triangle"),
    "yellow_bars": ((230, 210, 40), "bar"),
}

TINY_CONFIG = {
    "backbone": "seed-cnn",
    "embedding_dim": 16,
    "head": "anchored",
    "hidden_dim": 32,
    "image_size": 64,
    "pretrained": False,
}


def draw_shape(label: str, rng: np.random.Generator, size: int = 72) -> Image.Image:
    """One image of class ``label``: its shape and colour, jittered in place, size and shade."""
    colour, shape = SHAPES[label]
    background = tuple(int(c) for c in rng.integers(0, 60, size=3))
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    r = int(rng.integers(size // 5, size // 3))
    cx, cy = (int(v) for v in rng.integers(r, size - r, size=2))
    fill = tuple(int(np.clip(c + rng.integers(-30, 30), 0, 255)) for c in colour)
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "ellipse":
        draw.ellipse(box, fill=fill)
    elif shape == "rectangle":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    else:
        draw.rectangle((cx - r, cy - r // 4, cx + r, cy + r // 4), fill=fill)
    return image


def make_gallery(root: Path, per_class: int = 12, seed: int = 0, classes: tuple[str, ...] = tuple(SHAPES)) -> Path:
    rng = np.random.default_rng(seed)
    for label in classes:
        (root / label).mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            draw_shape(label, rng).save(root / label / f"{label}_{k:03d}.png")
    return root


def reset_peak_rss() -> None:
    """Start a new peak-memory measurement for this process (Linux: ``VmHWM`` back to the current RSS).

    ``getrusage``'s ``ru_maxrss`` cannot do this job: it never goes down, and a child process inherits its
    parent's value across ``exec``."""
    Path("/proc/self/clear_refs").write_text("5")


def peak_rss_bytes() -> int:
    """This process's peak resident memory since it started or since :func:`reset_peak_rss`."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


@pytest.fixture
def synthetic_gallery(tmp_path: Path) -> Path:
    return make_gallery(tmp_path / "gallery")


@pytest.fixture
def tiny_model() -> SiameseNetwork:
    torch.manual_seed(0)
    return SiameseNetwork(ModelConfig(**TINY_CONFIG)).eval()


@pytest.fixture
def tiny_checkpoint(tmp_path: Path, tiny_model: SiameseNetwork) -> Path:
    """An untrained tiny model saved as a real checkpoint, with a calibrated-looking threshold and probability
    (``same_probability`` = sigmoid(4 - 8 · distance): one half at the threshold)."""
    path = tmp_path / "tiny" / "best.pt"
    save_checkpoint(Checkpoint(tiny_model, class_names=sorted(SHAPES), threshold=0.5, platt=(4.0, -8.0)), path)
    return path


@pytest.fixture
def dogs_dir() -> Path:
    if not (DOGS / "manifest.csv").is_file():
        pytest.skip(f"real dog photos not found at {DOGS}")
    return DOGS
