"""Metric-learning losses by name: what ``imgsim train --loss`` picks (the article's contrastive loss by default).

Every loss is called as ``loss(embeddings, labels, indices_tuple=None)`` (see :mod:`.base`); a new one is a
subclass of :class:`PairLoss` or :class:`TripletLoss` in its own file, added to ``LOSSES``.
"""

from __future__ import annotations

from model.training.losses.base import MetricLoss, PairLoss, TripletLoss
from model.training.losses.contrastive import ContrastiveLoss
from model.training.losses.triplet import TripletMarginLoss

LOSSES: dict[str, type[MetricLoss]] = {"contrastive": ContrastiveLoss, "triplet": TripletMarginLoss}

__all__ = ["LOSSES", "ContrastiveLoss", "MetricLoss", "PairLoss", "TripletLoss", "TripletMarginLoss", "build_loss"]


def build_loss(name: str, margin: float | None = None) -> MetricLoss:
    """The loss called ``name``; ``margin=None`` keeps its own default (contrastive 1.0, triplet 0.2)."""
    if name not in LOSSES:
        raise ValueError(f"Unknown loss {name!r}. Only {', '.join(LOSSES)} are supported.")
    return LOSSES[name](margin)
