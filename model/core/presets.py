"""Image transforms as small presets (torchvision references style): one for training, one for everything else."""

from __future__ import annotations

import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class EvalPreset:
    """Resize the short side, centre-crop, normalise: the transform of indexing, serving and evaluation.

    Split in two steps so that callers can do the per-image geometry on uint8 (4x less memory traffic than
    float) where the image is decoded, and convert a whole batch to float at once: ``preset(image)`` equals
    ``preset.normalise(preset.crop(image)[None])[0]`` bit for bit.
    """

    def __init__(self, image_size: int = 224, resize_ratio: float = 0.875) -> None:
        self.image_size = image_size
        self.resize_size = round(image_size / resize_ratio)

    def crop(self, image: Image.Image | torch.Tensor) -> torch.Tensor:
        """An RGB image or a (3, h, w) uint8 tensor -> (3, s, s) uint8: resized short side, centre crop."""
        tensor = TF.pil_to_tensor(image) if isinstance(image, Image.Image) else image
        resized = TF.resize(tensor, [self.resize_size], antialias=True)
        return TF.center_crop(resized, [self.image_size])

    @staticmethod
    def normalise(batch: torch.Tensor) -> torch.Tensor:
        """uint8 (n, 3, s, s) -> float32 scaled to [0, 1] and normalised with the ImageNet statistics."""
        x = batch.float().div_(255.0)
        mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
        return x.sub_(mean).div_(std)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.normalise(self.crop(image)[None])[0]


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
