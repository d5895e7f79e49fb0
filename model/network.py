"""The Siamese network: one shared encoder (backbone + embedding head) applied to every image."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from model.backbones import build_backbone

HEADS = ("residual", "mlp", "linear")


@dataclass
class ModelConfig:
    backbone: str = "efficientnet-lite0"
    embedding_dim: int = 256
    head: str = "residual"
    hidden_dim: int = 1024
    image_size: int = 224
    pretrained: bool = True

    def __post_init__(self) -> None:
        if self.head not in HEADS:
            raise ValueError(f"Unknown head {self.head!r}. Only {', '.join(HEADS)} are supported.")
        if self.embedding_dim < 2:
            raise ValueError(f"embedding_dim must be at least 2, got {self.embedding_dim}.")

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


class EmbeddingHead(nn.Module):
    """Backbone features -> unit-length embedding.

    ``residual`` (the default) is ``normalize(P(f - mean) + g(f))``: ``P`` starts as the PCA projection of
    the training features and ``g``'s last layer starts at zero, so an untrained head reproduces the frozen
    backbone's geometry and training only adds a correction to it. That keeps what the pretrained backbone
    knows about breeds it never trains on (see BENCHMARKS.md for the numbers behind the choice).
    ``mlp`` is the naive head (two layers, random init); ``linear`` a single random projection.
    """

    def __init__(self, in_dim: int, out_dim: int, kind: str = "residual", hidden_dim: int = 1024) -> None:
        super().__init__()
        self.kind = kind
        self.mean: torch.Tensor
        self.register_buffer("mean", torch.zeros(in_dim))
        if kind == "mlp":
            self.project: nn.Module = nn.Sequential(
                nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim)
            )
        else:
            self.project = nn.Linear(in_dim, out_dim, bias=False)
            nn.init.orthogonal_(self.project.weight)
        self.residual: nn.Module | None = None
        if kind == "residual":
            last = nn.Linear(hidden_dim, out_dim)
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
            self.residual = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), last)

    @torch.no_grad()
    def fit_pca(self, features: torch.Tensor) -> None:
        """Start ``P`` at the top principal directions of ``features`` (identity-like initialisation)."""
        if not isinstance(self.project, nn.Linear):
            return
        features = features.float()
        mean = features.mean(dim=0)
        centred = features - mean
        out_dim = self.project.out_features
        # Eigenvectors of the (dim x dim) covariance: much cheaper than an SVD of the (n x dim) data.
        eigenvalues, eigenvectors = torch.linalg.eigh(centred.T @ centred)
        rank = int((eigenvalues > eigenvalues.max() * 1e-6).sum())
        components = eigenvectors.flip(1).T[: min(out_dim, rank)]
        if components.shape[0] < out_dim:  # fewer samples than dimensions: pad with orthogonal directions
            extra = torch.empty(out_dim - components.shape[0], components.shape[1])
            nn.init.orthogonal_(extra)
            components = torch.cat([components, extra])
        self.mean.copy_(mean)
        self.project.weight.copy_(components)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        z = self.project(features - self.mean)
        if self.residual is not None:
            z = z + self.residual(features)
        return F.normalize(z.float(), dim=-1)


class SiameseNetwork(nn.Module):
    """``embed(x)`` maps images alone to embeddings (index and service use it); ``forward`` embeds pairs."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = build_backbone(config.backbone, pretrained=config.pretrained)
        self.head = EmbeddingHead(
            self.backbone.feature_dim, config.embedding_dim, kind=config.head, hidden_dim=config.hidden_dim
        )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def forward(
        self, x1: torch.Tensor, x2: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Embeds a pair (the Siamese view); with one input, embeds it alone (what DDP training calls)."""
        if x2 is None:
            return self.embed(x1)
        return self.embed(x1), self.embed(x2)


def frozen_embedding(features: torch.Tensor) -> torch.Tensor:
    """The baseline every number is compared with: the frozen backbone's pooled features, unit length."""
    return F.normalize(features.float(), dim=-1)
