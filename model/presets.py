"""Image transforms as small presets (torchvision references style): one for training, one for everything else."""

from __future__ import annotations

import torch
from PIL import Image
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class EvalPreset:
    """Resize the short side, centre-crop, normalise: the transform of indexing, serving and evaluation."""

    def __init__(self, image_size: int = 224, resize_ratio: float = 0.875) -> None:
        self.image_size = image_size
        self.resize_size = round(image_size / resize_ratio)
        self.transform = v2.Compose(
            [
                v2.PILToTensor(),
                v2.Resize(self.resize_size, antialias=True),
                v2.CenterCrop(image_size),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
            ]
        )

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.transform(image)


class TrainPreset:
    """Light augmentation for fine-tuning: crops that keep most of the dog, flips, mild colour changes."""

    def __init__(self, image_size: int = 224) -> None:
        self.image_size = image_size
        self.transform = v2.Compose(
            [
                v2.PILToTensor(),
                v2.RandomResizedCrop(image_size, scale=(0.35, 1.0), antialias=True),
                v2.RandomHorizontalFlip(),
                v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
            ]
        )

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.transform(image)
