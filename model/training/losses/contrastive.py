"""The contrastive loss of the article: ``L = (1-y)·D² + y·max(0, m-D)²``, mean over pairs."""

from __future__ import annotations

import torch

from model.training.losses.base import PairLoss


class ContrastiveLoss(PairLoss):
    """``y = 0`` marks a similar pair, ``y = 1`` a dissimilar one (the article's convention).

    Similar pairs are pulled together (``D²``); dissimilar pairs are pushed apart until they are ``margin``
    away, after which they cost nothing. On unit-length embeddings distances lie in [0, 2].
    """

    default_margin = 1.0

    def pair_loss(self, distance: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        y = y.to(distance.dtype)
        similar = (1 - y) * distance.pow(2)
        dissimilar = y * (self.margin - distance).clamp_min(0).pow(2)
        return (similar + dissimilar).mean()
