"""The Siamese network: one shared encoder (backbone + embedding head) applied to every image."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from model.backbones import build_backbone

HEADS = ("anchored", "residual", "mlp")


@dataclass
class ModelConfig:
    backbone: str = "efficientnet-lite0"
    embedding_dim: int = 256
    head: str = "anchored"
    hidden_dim: int = 1024
    learned_weight: float = 0.5  # anchored head: the most the learnt half can move a cosine similarity
    image_size: int = 224
    pretrained: bool = True

    def __post_init__(self) -> None:
        if self.head not in HEADS:
            raise ValueError(f"Unknown head {self.head!r}. Only {', '.join(HEADS)} are supported.")
        if not 0.0 <= self.learned_weight <= 1.0:
            raise ValueError(f"learned_weight must be in [0, 1], got {self.learned_weight}.")
        if self.embedding_dim < 2:
            raise ValueError(f"embedding_dim must be at least 2, got {self.embedding_dim}.")

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


class EmbeddingHead(nn.Module):
    """Backbone features -> unit-length embedding. Three kinds:

    ``anchored`` (the default): ``[cos(a) * normalize(P(f - mean)), sin(a) * normalize(g(f))]``. The first
    half is the frozen backbone's own geometry (``P``: its PCA, fixed); the second half is learnt with the
    contrastive loss. The learnt half can move a cosine similarity by at most ``sin²(a)``
    (``learned_weight``), so training sharpens the classes it sees without overwriting what the pretrained
    backbone knows about classes it never saw. In training mode it returns the learnt half alone: that
    is what the contrastive loss trains. BENCHMARKS.md has the measurements behind this choice.
    ``residual``: ``normalize(P(f - mean) + g(f))``, ``P`` from the PCA and ``g`` starting at zero.
    ``mlp``: the naive head, two layers from random init.
    """

    def __init__(
        self, in_dim: int, out_dim: int, kind: str = "anchored", hidden_dim: int = 1024, learned_weight: float = 0.5
    ) -> None:
        super().__init__()
        self.kind = kind
        self.mean: torch.Tensor
        self.register_buffer("mean", torch.zeros(in_dim))
        self.learned_weight = learned_weight
        frozen_dim = out_dim // 2 if kind == "anchored" else out_dim
        self.residual: nn.Module | None = None
        self.learned: nn.Module | None = None
        if kind == "mlp":
            self.project: nn.Module = nn.Sequential(
                nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim)
            )
            return
        self.project = nn.Linear(in_dim, frozen_dim, bias=False)
        nn.init.orthogonal_(self.project.weight)
        if kind == "anchored":
            self.project.requires_grad_(False)  # the anchor stays the backbone's geometry
            self.learned = nn.Sequential(
                nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, out_dim - frozen_dim)
            )
        else:
            last = nn.Linear(hidden_dim, out_dim)
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
            self.residual = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), last)

    @torch.no_grad()
    def fit_pca(self, features: torch.Tensor) -> None:
        """Set ``P`` to the top principal directions of ``features`` (the anchored and residual kinds)."""
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
        if self.learned is not None and self.training:
            # Training sees the learnt half alone: the contrastive loss must separate classes there. Trained
            # through the mixture instead, it collapses, since the anchor already keeps most dissimilar pairs
            # beyond the margin and only the pull on similar pairs remains.
            return F.normalize(self.learned(features).float(), dim=-1)
        z = self.project(features - self.mean)
        if self.learned is not None:
            anchor = F.normalize(z.float(), dim=-1) * math.sqrt(1 - self.learned_weight)
            learned = F.normalize(self.learned(features).float(), dim=-1) * math.sqrt(self.learned_weight)
            return torch.cat([anchor, learned], dim=-1)
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
            self.backbone.feature_dim,
            config.embedding_dim,
            kind=config.head,
            hidden_dim=config.hidden_dim,
            learned_weight=config.learned_weight,
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
