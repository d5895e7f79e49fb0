"""The contrastive loss of the article: ``L = (1-y)·D² + y·max(0, m-D)²``, mean over pairs."""

from __future__ import annotations

import torch
from torch import nn


def euclidean_distance(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Row-wise distance; ``eps`` keeps the gradient finite when two embeddings coincide."""
    return (a - b).pow(2).sum(dim=-1).clamp_min(eps).sqrt()


class ContrastiveLoss(nn.Module):
    """``y = 0`` marks a similar pair, ``y = 1`` a dissimilar one (the article's convention).

    Similar pairs are pulled together (``D²``); dissimilar pairs are pushed apart until they are ``margin``
    away, after which they cost nothing. On unit-length embeddings distances lie in [0, 2].
    """

    def __init__(self, margin: float = 1.0) -> None:
        super().__init__()
        if margin <= 0:
            raise ValueError(f"margin must be positive, got {margin}.")
        self.margin = margin

    def forward(self, distance: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        y = y.to(distance.dtype)
        similar = (1 - y) * distance.pow(2)
        dissimilar = y * (self.margin - distance).clamp_min(0).pow(2)
        return (similar + dissimilar).mean()


def all_pairs(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every unordered pair ``(i, j), i < j`` in a batch, with ``y = 0`` where the labels agree."""
    i, j = torch.triu_indices(len(labels), len(labels), offset=1, device=labels.device)
    return i, j, (labels[i] != labels[j]).long()
