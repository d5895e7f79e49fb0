"""Backbone features of gallery items, computed once and cached on disk (frozen-backbone mode and eval)."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from model.core.backbones import Backbone
from model.core.checkpoint import content_hash
from model.core.files import atomic_path
from model.core.presets import EvalPreset
from model.data.datasets import ImageItems
from model.data.galleries import Item
from model.inference.onnx_features import features_in_workers, onnx_features

log = logging.getLogger(__name__)


@torch.no_grad()  # not inference_mode: the backbone converted here may train afterwards
def compute_features(
    backbone: Backbone,
    root: Path,
    items: Sequence[Item],
    *,
    image_size: int = 224,
    batch_size: int = 64,
    num_workers: int = 2,
    device: torch.device | None = None,
    progress: bool = True,
    desc: str = "features",
) -> torch.Tensor:
    """``(len(items), feature_dim)`` float32 on CPU, in the order of ``items``.

    On the CPU through ONNX Runtime when the backbone exports (see :mod:`model.inference.onnx_features`), else PyTorch.
    """
    device = device or next(backbone.parameters()).device
    if device.type == "cpu" and items:
        run = onnx_features(backbone, image_size)
        if run is not None:
            return features_in_workers(run, Path(root), items, image_size, progress, desc)
    preset = EvalPreset(image_size)
    dataset = ImageItems(root, items, preset, {}, draft_size=preset.resize_size)
    loader = DataLoader(
        dataset, batch_size=batch_size, num_workers=num_workers, pin_memory=device.type == "cuda"
    )
    backbone.eval()
    memory_format = torch.channels_last if device.type == "cpu" else torch.preserve_format
    backbone.to(memory_format=memory_format)
    chunks = []
    for images, _ in tqdm(loader, desc=desc, unit="batch", disable=not progress):
        images = images.to(device, non_blocking=True).contiguous(memory_format=memory_format)
        with torch.autocast(device.type, enabled=device.type == "cuda"):
            chunks.append(backbone(images).float().cpu())
    return torch.cat(chunks) if chunks else torch.zeros(0, backbone.feature_dim)


def cached_features(
    backbone: Backbone,
    backbone_name: str,
    root: Path,
    items: Sequence[Item],
    cache_dir: Path | None,
    **kwargs: object,
) -> torch.Tensor:
    """:func:`compute_features`, memoised per file in ``cache_dir``.

    One cache file per (backbone weights, input scaling, image size, gallery root) maps each relative path to its size,
    mtime and feature vector, so any subset of a gallery (train, validation, all) reuses what was computed.
    """
    if cache_dir is None:
        return compute_features(backbone, root, items, **kwargs)  # type: ignore[arg-type]
    key = hashlib.sha256()
    key.update(
        content_hash(
            {"backbone": backbone_name, "image_size": kwargs.get("image_size", 224), "input_norm": backbone.input_norm},
            backbone.state_dict(),
        ).encode()
    )
    key.update(str(Path(root).resolve()).encode())
    path = Path(cache_dir) / f"features-{key.hexdigest()[:24]}.pt"
    cache: dict[str, tuple[int, int, torch.Tensor]] = (
        torch.load(path, weights_only=True) if path.is_file() else {}
    )
    stamps = {}
    for item in items:
        stat = (root / item.path).stat()
        stamps[item.path] = (stat.st_size, stat.st_mtime_ns)
    missing = [i for i in items if cache.get(i.path, (None, None))[:2] != stamps[i.path]]
    if missing:
        log.info("computing features of %d of %d images (cache %s)", len(missing), len(items), path)
        computed = compute_features(backbone, root, missing, **kwargs)  # type: ignore[arg-type]
        for item, feature in zip(missing, computed, strict=True):
            cache[item.path] = (*stamps[item.path], feature.clone())
        with atomic_path(path) as tmp:
            torch.save(cache, tmp)
    if not items:
        return torch.zeros(0, backbone.feature_dim)
    return torch.stack([cache[i.path][2] for i in items])
