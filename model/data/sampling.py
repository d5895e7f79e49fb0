"""How training sees pairs.

``class-balanced`` (the default, as modern metric learning does): each batch holds ``m`` images of each of
``p`` classes, and the loss uses every pair (or triplet) inside the batch (``model.training.losses.indices``).
``article``: the original scheme, a fixed list of pairs: per class, ``n`` similar pairs within the class and
``n`` dissimilar pairs with other classes, labelled ``y = 0`` similar and ``y = 1`` dissimilar.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

from torch.utils.data import Sampler

SAMPLERS = ("class-balanced", "article")


class ClassBalancedBatchSampler(Sampler[list[int]]):
    """Batches of ``m_per_class`` indices from each of ``classes_per_batch`` classes; ``epoch`` reseeds it.

    ``rank``/``world_size`` give each DDP process its own disjoint share of the batches of an epoch.
    """

    def __init__(
        self,
        labels: Sequence[str],
        m_per_class: int = 8,
        classes_per_batch: int | None = None,
        batches_per_epoch: int | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.by_class: dict[str, list[int]] = {}
        for i, label in enumerate(labels):
            self.by_class.setdefault(label, []).append(i)
        if len(self.by_class) < 2:
            raise ValueError("Class-balanced batches need at least 2 classes.")
        self.m = m_per_class
        self.p = min(classes_per_batch or len(self.by_class), len(self.by_class))
        if self.m < 2 or self.p < 2:
            raise ValueError(
                "A batch needs at least 2 classes and 2 images per class to form both pair kinds."
            )
        self.batches = batches_per_epoch or max(1, len(labels) // (self.m * self.p))
        self.seed, self.epoch, self.rank, self.world_size = seed, 0, rank, world_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.batches // self.world_size

    def __iter__(self) -> Iterator[list[int]]:
        rng = random.Random(self.seed * 100_003 + self.epoch)
        classes = sorted(self.by_class)
        for b in range(len(self) * self.world_size):
            chosen = rng.sample(classes, self.p)
            batch = []
            for c in chosen:
                members = self.by_class[c]
                # Sample without replacement where the class is large enough, else with.
                batch += (
                    rng.sample(members, self.m) if len(members) >= self.m else rng.choices(members, k=self.m)
                )
            if b % self.world_size == self.rank:
                yield batch


def article_pairs(labels: Sequence[str], pairs_per_class: int, seed: int = 0) -> list[tuple[int, int, int]]:
    """The article's pair list: ``(i, j, y)`` with ``pairs_per_class`` similar and dissimilar pairs per class."""
    rng = random.Random(seed)
    by_class: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    if len(by_class) < 2:
        raise ValueError("Pairs need at least 2 classes.")
    pairs = []
    for c in sorted(by_class):
        members = by_class[c]
        others = [i for d in sorted(by_class) if d != c for i in by_class[d]]
        for _ in range(pairs_per_class):
            if len(members) >= 2:
                a, b = rng.sample(members, 2)
                pairs.append((a, b, 0))
            pairs.append((rng.choice(members), rng.choice(others), 1))
    rng.shuffle(pairs)
    return pairs
