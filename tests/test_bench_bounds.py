"""The helpers behind bench_bounds' readings: breed folders matched to ImageNet classes, the top confusion."""

from __future__ import annotations

import torch

from bench.bench_bounds import accuracy, imagenet_classes, top_confusion


def test_breed_folders_map_to_imagenet_classes_by_name() -> None:
    assert imagenet_classes(["beagle", "english_foxhound", "shih_tzu"]) == [162, 167, 155]
    assert imagenet_classes(["beagle", "labradoodle"]) is None  # not an ImageNet class: no zero-shot reading


def test_top_confusion_counts_both_directions() -> None:
    names = ["a", "b", "c"]
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 2])
    predicted = torch.tensor([1, 0, 0, 1, 0, 2, 2])  # a->b, b->a, c->a: a/b twice, a/c once
    assert top_confusion(predicted, labels, names) == "a / b: 2 of 3 errors"
    assert abs(accuracy(predicted, labels) - 4 / 7) < 1e-6
