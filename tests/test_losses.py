from __future__ import annotations

import pytest
import torch

from model.training.losses.contrastive import ContrastiveLoss, all_pairs, euclidean_distance


def test_contrastive_loss_matches_hand_computed_values() -> None:
    # D = 0.5 similar: 0.25. D = 0.3 dissimilar, m = 1: (1 - 0.3)^2 = 0.49. D = 1.5 dissimilar: 0.
    loss = ContrastiveLoss(margin=1.0)
    d = torch.tensor([0.5, 0.3, 1.5])
    y = torch.tensor([0, 1, 1])
    assert loss(d, y).item() == pytest.approx((0.25 + 0.49 + 0.0) / 3)


def test_margin_is_configurable() -> None:
    d, y = torch.tensor([0.3]), torch.tensor([1])
    assert ContrastiveLoss(margin=2.0)(d, y).item() == pytest.approx(1.7**2)
    with pytest.raises(ValueError, match="margin"):
        ContrastiveLoss(margin=0)


def test_gradient_pulls_similar_and_pushes_dissimilar() -> None:
    a = torch.tensor([[0.0, 0.0]], requires_grad=True)
    b = torch.tensor([[0.6, 0.0]])
    ContrastiveLoss(1.0)(euclidean_distance(a, b), torch.tensor([0])).backward()
    assert a.grad is not None and a.grad[0, 0] < 0  # moving a towards b lowers the loss
    a.grad = None
    ContrastiveLoss(1.0)(euclidean_distance(a, b), torch.tensor([1])).backward()
    assert a.grad[0, 0] > 0  # away from b


def test_distance_of_identical_points_has_finite_gradient() -> None:
    a = torch.ones(1, 4, requires_grad=True)
    euclidean_distance(a, torch.ones(1, 4)).sum().backward()
    assert torch.isfinite(a.grad).all()


def test_all_pairs_labels_every_unordered_pair() -> None:
    i, j, y = all_pairs(torch.tensor([0, 0, 1]))
    assert list(zip(i.tolist(), j.tolist(), y.tolist(), strict=True)) == [(0, 1, 0), (0, 2, 1), (1, 2, 1)]
