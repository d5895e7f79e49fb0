"""Batch embedding of images and files with a trained checkpoint: what the index and the service call.

``Embedder`` owns the network on its device and the eval transform. Decoding runs in DataLoader workers
(or the caller's threads), so it overlaps the forward pass.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from model.checkpoint import Checkpoint, load_checkpoint
from model.images import ImageError, load_image
from model.presets import EvalPreset

log = logging.getLogger(__name__)


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device} was asked for, but CUDA is not available on this machine.")
    if not (device == "cpu" or device.startswith("cuda")):
        raise ValueError(f"Unknown device {device!r}. Only auto, cpu, cuda and cuda:N are supported.")
    return torch.device(device)


class _FileDataset(Dataset[tuple[int, torch.Tensor | None, str]]):
    """Decodes and transforms one file; a failure is returned as a message, never raised."""

    def __init__(self, paths: Sequence[Path], preset: EvalPreset) -> None:
        self.paths, self.preset = paths, preset

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str]:
        try:
            image = load_image(self.paths[i], draft_size=self.preset.resize_size)
            return i, self.preset(image), ""
        except (ImageError, OSError) as exc:
            return i, None, f"{type(exc).__name__}: {exc}"


def _collate(batch: list[tuple[int, torch.Tensor | None, str]]) -> list[tuple[int, torch.Tensor | None, str]]:
    return batch


@dataclass
class EmbedResult:
    embeddings: np.ndarray  # (n_ok, d) float32, rows in the order of ``ok``
    ok: list[int]  # indices into the input paths that were embedded
    failures: dict[int, str] = field(default_factory=dict)  # index -> reason, for unreadable files


class Embedder:
    def __init__(self, checkpoint: Checkpoint | str | Path, device: str = "auto") -> None:
        self.checkpoint = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
        self.device = resolve_device(device)
        self.model = self.checkpoint.model.to(self.device).eval()
        self.preset = EvalPreset(self.checkpoint.config.image_size)

    @property
    def dim(self) -> int:
        return self.checkpoint.config.embedding_dim

    @torch.inference_mode()
    def embed_tensors(self, batch: torch.Tensor) -> np.ndarray:
        """Transformed images (n, 3, h, w) -> unit-length embeddings (n, d) float32."""
        batch = batch.to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, enabled=self.device.type == "cuda"):
            out = self.model.embed(batch)
        return out.float().cpu().numpy()

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.embed_tensors(torch.stack([self.preset(im) for im in images]))

    def embed_files(
        self, paths: Sequence[str | Path], batch_size: int = 64, num_workers: int = 2, progress: bool = True
    ) -> EmbedResult:
        """Embed files in batches with worker processes decoding ahead; unreadable files are reported."""
        dataset = _FileDataset([Path(p) for p in paths], self.preset)
        loader = DataLoader(
            dataset,
            batch_size=batch_size,
            num_workers=num_workers,
            collate_fn=_collate,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
        )
        chunks, ok, failures = [], [], {}
        for batch in tqdm(loader, desc="embedding", unit="batch", disable=not progress):
            good = [(i, t) for i, t, _ in batch if t is not None]
            failures.update({i: err for i, t, err in batch if t is None})
            if good:
                chunks.append(self.embed_tensors(torch.stack([t for _, t in good])))
                ok.extend(i for i, _ in good)
        for i, err in failures.items():
            log.warning("skipped %s: %s", paths[i], err)
        embeddings = np.concatenate(chunks) if chunks else np.zeros((0, self.dim), dtype=np.float32)
        return EmbedResult(embeddings, ok, failures)
