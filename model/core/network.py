"""The Siamese network: one shared encoder (backbone + embedding head) applied to every image."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from model.core.backbones import INPUT_NORMS, build_backbone, native_image_size

HEADS = ("anchored", "residual", "mlp")
LEGACY_INPUT_NORM = "imagenet"  # what a checkpoint without ``input_norm`` was trained with


@dataclass
class ModelConfig:
    backbone: str = "efficientnet-lite0"
    embedding_dim: int = 256
    head: str = "anchored"
    hidden_dim: int = 1024
    learned_weight: float = 0.3  # anchored head: the most the learnt half can move a cosine similarity
    learned_dim: int | None = None  # anchored head: dimensions of the learnt half (default embedding_dim // 8)
    class_weight: float = 0.5  # anchored head: share of the anchor given to the ImageNet class probabilities
    image_size: int = 0  # 0: the backbone's native size (lite0 224, lite1 240, lite2 260, else 224)
    pretrained: bool = True
    # The input scaling the backbone sees (model/core/backbones.py): "native" for new checkpoints; a checkpoint
    # that does not name it predates the option and is loaded as "imagenet", which is what it was trained with.
    input_norm: str = "native"

    def __post_init__(self) -> None:
        if self.image_size == 0:
            self.image_size = native_image_size(self.backbone)
        if self.input_norm not in INPUT_NORMS:
            raise ValueError(f"Unknown input_norm {self.input_norm!r}. Only {', '.join(INPUT_NORMS)} are supported.")
        if self.head not in HEADS:
            raise ValueError(f"Unknown head {self.head!r}. Only {', '.join(HEADS)} are supported.")
        if not 0.0 <= self.learned_weight <= 1.0:
            raise ValueError(f"learned_weight must be in [0, 1], got {self.learned_weight}.")
        if not 0.0 <= self.class_weight <= 1.0:
            raise ValueError(f"class_weight must be in [0, 1], got {self.class_weight}.")
        if self.embedding_dim < 2:
            raise ValueError(f"embedding_dim must be at least 2, got {self.embedding_dim}.")
        if self.learned_dim is None:
            self.learned_dim = max(1, self.embedding_dim // 8)
        if not 1 <= self.learned_dim < self.embedding_dim:
            raise ValueError(f"learned_dim must be in [1, embedding_dim), got {self.learned_dim}.")

    def to_dict(self) -> dict[str, object]:
        """The model arguments a checkpoint stores (and hashes). ``input_norm="imagenet"`` is left out, as
        checkpoints made before the option left it out: their content hash, and so their index and their cached
        ONNX export, stay the same."""
        args = asdict(self)
        if self.input_norm == LEGACY_INPUT_NORM:
            del args["input_norm"]
        return args


class EmbeddingHead(nn.Module):
    """Backbone features -> unit-length embedding. Three kinds:

    ``anchored`` (the default) is ``[cos(a) * anchor(f), sin(a) * normalize(g(f))]``.
    The anchor is what the pretrained backbone already knows, frozen: a PCA of its centred features and,
    where it has an ImageNet classifier, of its class probabilities (as ``sqrt(softmax)``, so that cosine is
    the Bhattacharyya coefficient; ``class_weight`` is their share), fitted to the ImageNet classes when
    there is a classifier (see :meth:`fit_pca`). ``g`` is the learnt half, trained alone
    with the contrastive loss (in training mode the head returns it alone). It can move a cosine similarity
    by at most ``sin²(a) = learned_weight``, so training sharpens the classes it sees without overwriting
    what the backbone knows about classes it never saw. BENCHMARKS.md has the measurements behind this.
    ``residual``: ``normalize(P(f - mean) + g(f))``, ``P`` from the PCA and ``g`` starting at zero.
    ``mlp``: the naive head, two layers from random init.
    """

    def __init__(self, in_dim: int, out_dim: int, config: ModelConfig, classifier: nn.Linear | None = None) -> None:
        super().__init__()
        self.kind = config.head
        self.learned_weight = config.learned_weight
        self.class_weight = config.class_weight
        self.mean: torch.Tensor
        self.register_buffer("mean", torch.zeros(in_dim))
        self.residual: nn.Module | None = None
        self.learned: nn.Module | None = None
        self.classifier: nn.Linear | None = None
        hidden = config.hidden_dim
        if self.kind == "mlp":
            self.project: nn.Module = nn.Sequential(
                nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_dim)
            )
            return
        anchor_in = in_dim
        if self.kind == "anchored" and classifier is not None and config.class_weight > 0:
            self.classifier = classifier.requires_grad_(False)
            anchor_in += classifier.out_features
        self.anchor_mean: torch.Tensor
        self.register_buffer("anchor_mean", torch.zeros(anchor_in))
        learned_dim = int(config.learned_dim or 1) if self.kind == "anchored" else 0
        self.project = nn.Linear(anchor_in, out_dim - learned_dim, bias=False)
        nn.init.orthogonal_(self.project.weight)
        if self.kind == "anchored":
            self.project.requires_grad_(False)  # the anchor stays the backbone's geometry
            self.learned = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, learned_dim))
        else:
            last = nn.Linear(hidden, out_dim)
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
            self.residual = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), last)

    def anchor_input(self, features: torch.Tensor) -> torch.Tensor:
        """What the frozen projection sees: centred features (anchored: unit length, beside class probabilities)."""
        centred = features.float() - self.mean
        if self.kind != "anchored":
            return centred
        unit = F.normalize(centred, dim=-1)
        if self.classifier is None:
            return unit
        probs = F.normalize(self.classifier(features.float()).softmax(dim=-1).sqrt(), dim=-1)
        return torch.cat([unit * math.sqrt(1 - self.class_weight), probs * math.sqrt(self.class_weight)], dim=-1)

    @torch.no_grad()
    def fit_pca(self, features: torch.Tensor) -> None:
        """Set the frozen projection to the top principal directions of the anchor's inputs.

        The training features give the mean that centres them. With an ImageNet classifier, the directions
        are fitted to its 1,000 classes, one prototype each, not to the training images: fitted to the
        training classes, the projection keeps what tells them apart and drops directions that matter for
        classes never trained on (on the dogs' open splits, Recall@1 of the anchor alone 0.924 / 0.897 /
        0.963 fitted to the training images, 0.943 / 0.905 / 0.966 fitted to the prototypes; the frozen
        backbone 0.932 / 0.888 / 0.962).
        """
        if not isinstance(self.project, nn.Linear):
            return
        features = features.float()
        self.mean.copy_(features.mean(dim=0))
        inputs = self.class_prototypes() if self.classifier is not None else self.anchor_input(features)
        mean = inputs.mean(dim=0)
        centred = inputs - mean
        out_dim = self.project.out_features
        # Eigenvectors of the (dim x dim) covariance: much cheaper than an SVD of the (n x dim) data.
        eigenvalues, eigenvectors = torch.linalg.eigh(centred.T @ centred)
        rank = int((eigenvalues > eigenvalues.max() * 1e-6).sum())
        components = eigenvectors.flip(1).T[: min(out_dim, rank)]
        if components.shape[0] < out_dim:  # fewer samples than dimensions: pad with orthogonal directions
            extra = torch.empty(out_dim - components.shape[0], components.shape[1])
            nn.init.orthogonal_(extra)
            components = torch.cat([components, extra])
        self.anchor_mean.copy_(mean)
        self.project.weight.copy_(components)

    def class_prototypes(self) -> torch.Tensor:
        """One anchor input per ImageNet class: the direction that raises its logit (its weight row) beside
        its one-hot probabilities, weighted as in :meth:`anchor_input`."""
        assert self.classifier is not None
        weight = self.classifier.weight.float()
        unit = F.normalize(weight, dim=-1)
        onehot = torch.eye(weight.shape[0], device=weight.device)
        return torch.cat([unit * math.sqrt(1 - self.class_weight), onehot * math.sqrt(self.class_weight)], dim=-1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.learned is not None and self.training:
            # Training sees the learnt half alone: the contrastive loss must separate classes there. Trained
            # through the mixture instead, it collapses, since the anchor already keeps most dissimilar pairs
            # beyond the margin and only the pull on similar pairs remains.
            return F.normalize(self.learned(features).float(), dim=-1)
        if self.kind == "mlp":
            return F.normalize(self.project(features - self.mean).float(), dim=-1)
        z = self.project(self.anchor_input(features) - self.anchor_mean)
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
        self.backbone = build_backbone(config.backbone, pretrained=config.pretrained, input_norm=config.input_norm)
        self.head = EmbeddingHead(
            self.backbone.feature_dim, config.embedding_dim, config, classifier=self.backbone.imagenet_head()
        )

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
