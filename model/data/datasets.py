"""The torch dataset over gallery items: decoded, transformed images (fine-tuning; features without ONNX Runtime)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset

from model.core.images import load_image
from model.data.galleries import Item


class ImageItems(Dataset[tuple[torch.Tensor, int]]):
    """``(transformed image, class index)`` for each item; every image passes through ``load_image``."""

    def __init__(
        self,
        root: Path,
        items: Sequence[Item],
        transform: Callable[[Image.Image], torch.Tensor],
        class_to_idx: dict[str, int],
        draft_size: int | None = None,
    ) -> None:
        self.root, self.items, self.transform = root, list(items), transform
        self.class_to_idx, self.draft_size = class_to_idx, draft_size

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        item = self.items[i]
        image = load_image(self.root / item.path, draft_size=self.draft_size)
        return self.transform(image), self.class_to_idx.get(item.label, -1)

