"""A triplet margin loss: ``max(0, D(a, p) - D(a, n) + m)``, averaged over the triplets that still cost."""

from __future__ import annotations

import torch

from model.training.losses.base import TripletLoss


class TripletMarginLoss(TripletLoss):
    """Each anchor must be nearer its positive than its negative by ``margin``. With every triplet of a batch
    most are already satisfied; averaging over the others only ("batch all", as pytorch-metric-learning's
    default reducer does) keeps the gradient from vanishing as training succeeds.
    """

    default_margin = 0.2

    def triplet_loss(self, positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
        losses = (positive - negative + self.margin).clamp_min(0)
        active = losses > 0
        return losses[active].mean() if active.any() else losses.sum()  # all satisfied: zero, still a graph
