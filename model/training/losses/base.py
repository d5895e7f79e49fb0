"""The interface every loss has: pytorch-metric-learning's ``loss(embeddings, labels, indices_tuple=None)``.

Without ``indices_tuple`` the loss uses every pair (or triplet) of the batch that ``labels`` define; with it,
only those, converted to what the loss takes (pairs to triplets through shared anchors, and back). The
distances are computed here; a loss is only the formula on them.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from model.training.losses.indices import (
    IndicesTuple,
    all_pairs,
    all_triplets,
    euclidean_distance,
    labelled_pairs,
    to_triplets,
)


class MetricLoss(nn.Module):
    takes: ClassVar[str]  # "pairs" or "triplets"
    default_margin: ClassVar[float]

    def __init__(self, margin: float | None = None) -> None:
        super().__init__()
        margin = self.default_margin if margin is None else margin
        if margin <= 0:
            raise ValueError(f"margin must be positive, got {margin}.")
        self.margin = margin

    def forward(
        self, embeddings: torch.Tensor, labels: torch.Tensor, indices_tuple: IndicesTuple | None = None
    ) -> torch.Tensor:
        """``embeddings`` (n, d), ``labels`` (n,) class indices -> the loss, a scalar."""
        raise NotImplementedError


class PairLoss(MetricLoss):
    takes = "pairs"

    def forward(
        self, embeddings: torch.Tensor, labels: torch.Tensor, indices_tuple: IndicesTuple | None = None
    ) -> torch.Tensor:
        i, j, y = all_pairs(labels) if indices_tuple is None else labelled_pairs(indices_tuple)
        if len(i) == 0:
            return zero_loss(embeddings)
        return self.pair_loss(euclidean_distance(embeddings[i], embeddings[j]), y)

    def pair_loss(self, distance: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Distances of the pairs and their ``y`` (0 similar, 1 dissimilar) -> the loss."""
        raise NotImplementedError


class TripletLoss(MetricLoss):
    takes = "triplets"

    def forward(
        self, embeddings: torch.Tensor, labels: torch.Tensor, indices_tuple: IndicesTuple | None = None
    ) -> torch.Tensor:
        a, p, n = all_triplets(labels) if indices_tuple is None else to_triplets(indices_tuple)
        if len(a) == 0:
            return zero_loss(embeddings)
        anchors = embeddings[a]
        return self.triplet_loss(euclidean_distance(anchors, embeddings[p]), euclidean_distance(anchors, embeddings[n]))

    def triplet_loss(self, positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
        """Each triplet's anchor-positive and anchor-negative distances -> the loss."""
        raise NotImplementedError


def zero_loss(embeddings: torch.Tensor) -> torch.Tensor:
    """Nothing to compare in this batch: a zero that still backpropagates (the step changes nothing)."""
    return embeddings.sum() * 0
