"""Which embeddings a loss compares, in pytorch-metric-learning's ``indices_tuple`` shapes.

Pairs are ``(a1, p, a2, n)``: ``(a1[k], p[k])`` similar pairs, ``(a2[k], n[k])`` dissimilar ones. Triplets are
``(a, p, n)``: anchor, a positive of its class, a negative of another. All are index tensors into a batch.
Pair losses see pairs as a list ``(i, j, y)`` in the article's convention: ``y = 0`` similar, ``1`` dissimilar.
"""

from __future__ import annotations

import torch

Pairs = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
Triplets = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
IndicesTuple = Pairs | Triplets
LabelledPairs = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (i, j, y)


def euclidean_distance(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Row-wise distance; ``eps`` keeps the gradient finite when two embeddings coincide."""
    return (a - b).pow(2).sum(dim=-1).clamp_min(eps).sqrt()


def all_pairs(labels: torch.Tensor) -> LabelledPairs:
    """Every unordered pair ``(i, j), i < j`` in a batch, with ``y = 0`` where the labels agree."""
    i, j = torch.triu_indices(len(labels), len(labels), offset=1, device=labels.device)
    return i, j, (labels[i] != labels[j]).long()


def all_triplets(labels: torch.Tensor) -> Triplets:
    """Every ``(anchor, positive, negative)`` of a batch: ``n³`` booleans, fine for batches of hundreds."""
    same = labels[:, None] == labels[None, :]
    positive = same & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    a, p, n = torch.where(positive[:, :, None] & ~same[:, None, :])
    return a, p, n


def pairs_from(i: torch.Tensor, j: torch.Tensor, y: torch.Tensor) -> Pairs:
    """A list of pairs ``(i, j, y)`` as an ``indices_tuple``."""
    similar = y == 0
    return i[similar], j[similar], i[~similar], j[~similar]


def labelled_pairs(indices: IndicesTuple) -> LabelledPairs:
    """An ``indices_tuple`` as a list of pairs ``(i, j, y)``, the similar ones first; triplets give the pairs
    ``(a, p)`` and ``(a, n)``."""
    a1, p, a2, n = indices if len(indices) == 4 else (indices[0], indices[1], indices[0], indices[2])
    y = torch.cat([torch.zeros_like(a1), torch.ones_like(a2)])
    return torch.cat([a1, a2]), torch.cat([p, n]), y


def to_triplets(indices: IndicesTuple) -> Triplets:
    """Triplets as they are, or from pairs: each similar and dissimilar pair that share their anchor."""
    if len(indices) == 3:
        return indices
    a1, p, a2, n = indices
    similar, dissimilar = torch.where(a1[:, None] == a2[None, :])
    return a1[similar], p[similar], n[dissimilar]
