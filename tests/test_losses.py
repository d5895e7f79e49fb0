from __future__ import annotations

import pytest
import torch

from model.training.losses import LOSSES, ContrastiveLoss, TripletMarginLoss, build_loss
from model.training.losses.indices import (
    all_pairs,
    all_triplets,
    euclidean_distance,
    labelled_pairs,
    pairs_from,
    to_triplets,
)


def on_a_line(*positions: float) -> torch.Tensor:
    """1-d embeddings, so that distances can be read off: D(i, j) = |x_i - x_j|."""
    return torch.tensor(positions).unsqueeze(1)


def test_contrastive_loss_matches_hand_computed_values() -> None:
    # D = 0.5 similar: 0.25. D = 0.3 dissimilar, m = 1: (1 - 0.3)^2 = 0.49. D = 1.5 dissimilar: 0.
    loss = ContrastiveLoss(margin=1.0)
    d = torch.tensor([0.5, 0.3, 1.5])
    y = torch.tensor([0, 1, 1])
    assert loss.pair_loss(d, y).item() == pytest.approx((0.25 + 0.49 + 0.0) / 3)
    # The same through the metric-learning interface: embeddings on a line, the pairs given.
    emb = on_a_line(0.0, 0.5, 0.3, 1.5)
    pairs = pairs_from(torch.tensor([0, 0, 0]), torch.tensor([1, 2, 3]), y)
    assert loss(emb, torch.tensor([0, 0, 1, 2]), pairs).item() == pytest.approx((0.25 + 0.49 + 0.0) / 3)


def test_margin_is_configurable() -> None:
    d, y = torch.tensor([0.3]), torch.tensor([1])
    assert ContrastiveLoss(margin=2.0).pair_loss(d, y).item() == pytest.approx(1.7**2)
    with pytest.raises(ValueError, match="margin"):
        ContrastiveLoss(margin=0)


def test_gradient_pulls_similar_and_pushes_dissimilar() -> None:
    a = torch.tensor([[0.0, 0.0]], requires_grad=True)
    b = torch.tensor([[0.6, 0.0]])
    ContrastiveLoss(1.0).pair_loss(euclidean_distance(a, b), torch.tensor([0])).backward()
    assert a.grad is not None and a.grad[0, 0] < 0  # moving a towards b lowers the loss
    a.grad = None
    ContrastiveLoss(1.0).pair_loss(euclidean_distance(a, b), torch.tensor([1])).backward()
    assert a.grad[0, 0] > 0  # away from b


def test_distance_of_identical_points_has_finite_gradient() -> None:
    a = torch.ones(1, 4, requires_grad=True)
    euclidean_distance(a, torch.ones(1, 4)).sum().backward()
    assert torch.isfinite(a.grad).all()


def test_all_pairs_labels_every_unordered_pair() -> None:
    i, j, y = all_pairs(torch.tensor([0, 0, 1]))
    assert list(zip(i.tolist(), j.tolist(), y.tolist(), strict=True)) == [(0, 1, 0), (0, 2, 1), (1, 2, 1)]


def test_contrastive_loss_over_a_batch_is_the_articles_formula_over_every_pair() -> None:
    torch.manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(24, 8), dim=1)
    labels = torch.randint(0, 4, (24,))
    i, j = torch.triu_indices(24, 24, offset=1)
    d, y = (emb[i] - emb[j]).norm(dim=1), (labels[i] != labels[j]).float()
    expected = ((1 - y) * d**2 + y * (0.7 - d).clamp_min(0) ** 2).mean()
    assert ContrastiveLoss(0.7)(emb, labels).item() == pytest.approx(expected.item(), rel=1e-6)


def test_triplet_loss_matches_hand_computed_values() -> None:
    # Anchor 0, positive at 0.5, negatives at 0.6 (violation 0.5 - 0.6 + 0.2 = 0.1) and 0.9 (none).
    emb, labels = on_a_line(0.0, 0.5, 0.6, 0.9), torch.tensor([0, 0, 1, 2])
    loss = TripletMarginLoss(margin=0.2)
    given = (torch.tensor([0, 0]), torch.tensor([1, 1]), torch.tensor([2, 3]))
    assert loss(emb, labels, given).item() == pytest.approx(0.1)  # the mean over the triplets that cost
    # Every triplet of the batch: also anchor 1 (positive 0 at 0.5; negative 2 at 0.1: 0.6, negative 3 at 0.4:
    # 0.3), so the active ones cost 0.1, 0.6 and 0.3.
    assert loss(emb, labels).item() == pytest.approx((0.1 + 0.6 + 0.3) / 3)
    assert loss(on_a_line(0.0, 0.1, 1.0, 1.5), labels).item() == 0.0  # every triplet satisfied: zero, not NaN


def test_triplet_loss_gradient_pulls_the_positive_and_pushes_the_negative() -> None:
    emb = on_a_line(0.0, 0.5, 0.6).requires_grad_(True)
    TripletMarginLoss(0.2)(emb, torch.tensor([0, 0, 1])).backward()
    assert emb.grad is not None
    assert emb.grad[1, 0] > 0 and emb.grad[2, 0] < 0  # descent moves the positive in and the negative out


def test_all_triplets_are_every_anchor_positive_negative() -> None:
    a, p, n = all_triplets(torch.tensor([0, 0, 1, 1]))
    triplets = sorted(zip(a.tolist(), p.tolist(), n.tolist(), strict=True))
    classes = [0, 0, 1, 1]
    expected = [
        (x, y, z)
        for x in range(4)
        for y in range(4)
        for z in range(4)
        if x != y and classes[x] == classes[y] != classes[z]
    ]
    assert triplets == expected and len(triplets) == 8


def test_pairs_become_triplets_through_a_shared_anchor_and_triplets_become_pairs() -> None:
    # Similar (0, 1) and (2, 3); dissimilar (0, 4) and (5, 1): only anchor 0 is in both.
    pairs = (torch.tensor([0, 2]), torch.tensor([1, 3]), torch.tensor([0, 5]), torch.tensor([4, 1]))
    assert [t.tolist() for t in to_triplets(pairs)] == [[0], [1], [4]]
    assert [t.tolist() for t in labelled_pairs(pairs)] == [[0, 2, 0, 5], [1, 3, 4, 1], [0, 0, 1, 1]]
    emb, labels = on_a_line(0.0, 0.5, 0.6, 0.9), torch.tensor([0, 0, 1, 2])
    triplets = (torch.tensor([0, 0]), torch.tensor([1, 1]), torch.tensor([2, 3]))
    # The contrastive loss takes the triplets as their pairs: (0,1) twice similar, (0,2) and (0,3) dissimilar.
    expected = (2 * 0.25 + 0.4**2 + 0.1**2) / 4
    assert ContrastiveLoss(1.0)(emb, labels, triplets).item() == pytest.approx(expected)


def test_a_batch_with_nothing_to_compare_costs_zero_not_nan() -> None:
    emb = torch.randn(1, 4, requires_grad=True)
    for name in LOSSES:
        loss = build_loss(name)(emb, torch.tensor([0]))
        loss.backward()
        assert loss.item() == 0.0 and emb.grad is not None and not emb.grad.any()


def test_the_registry_builds_each_loss_with_its_own_default_margin() -> None:
    assert set(LOSSES) == {"contrastive", "triplet"}
    contrastive, triplet = build_loss("contrastive"), build_loss("triplet", None)
    assert isinstance(contrastive, ContrastiveLoss) and contrastive.margin == 1.0
    assert isinstance(triplet, TripletMarginLoss) and triplet.margin == 0.2
    assert build_loss("triplet", 0.5).margin == 0.5
    with pytest.raises(ValueError, match=r"Unknown loss 'arcface'\. Only contrastive, triplet are supported\."):
        build_loss("arcface")
