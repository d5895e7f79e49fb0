"""The same/different verdict, calibrated so that it holds for classes the model never trained on.

A threshold calibrated on held-out photos of the training classes is too permissive for a new class: the
learnt half of the embedding pulls photos of a trained class together, so their "same" distances are smaller
than those of a class it never saw (open split 0 of the dogs: accuracy 0.711 at such a threshold, 0.887 at
one fitted on the unseen pairs themselves). So here whole classes are held out: the training classes are
split into folds, a head is trained on the other folds' classes, balanced pairs are drawn among the held-out
classes' photos, and the distances of every fold are pooled. The threshold (best balanced accuracy) and the
Platt coefficients of ``same_probability`` are fitted on that pool; the shipped head is the one trained on
all classes. BENCHMARKS.md has the accuracy this gives on classes never trained on, against an oracle.

It needs frozen mode (a fold's head trains in seconds on the cached features) and at least two folds of two
classes. Otherwise, as before, both are fitted on pairs of held-out photos of the training classes, and the
checkpoint's ``calibration["method"]`` says which way it was done.
"""

from __future__ import annotations

import argparse
import logging
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from model.core.network import EmbeddingHead, SiameseNetwork
from model.evaluation.calibration import fit_platt
from model.evaluation.evaluate import EvalResult
from model.evaluation.metrics import calibrate_threshold, retrieval_metrics, sample_pairs
from model.training.loop import PairBatches, StepContext, train_one_epoch, warmup_cosine
from model.training.losses import build_loss

log = logging.getLogger(__name__)

FOLDS = 3
PAIRS_PER_FOLD = 4000


@dataclass
class Verdict:
    threshold: float
    platt: tuple[float, float] | None
    record: dict[str, Any] = field(default_factory=dict)  # stored as the checkpoint's ``calibration``


def class_folds(classes: Sequence[str], k: int = FOLDS, seed: int = 0) -> list[list[str]]:
    """At most ``k`` seeded folds of the classes, each of at least two (a fold of one class has no pairs of
    different classes); none when two such folds do not fit."""
    n = min(k, len(classes) // 2)
    if n < 2:
        return []
    order = random.Random(seed).sample(sorted(classes), len(classes))
    return [sorted(order[i::n]) for i in range(n)]


def calibrate_verdict(
    model: SiameseNetwork,
    args: argparse.Namespace,
    result: EvalResult,
    features: torch.Tensor | None,
    labels: Sequence[str],
    is_val: np.ndarray,
    device: torch.device,
) -> Verdict:
    """Cross-class calibration on ``features`` (frozen backbone features of the training and held-out photos of
    the training classes, ``is_val`` marking the held-out ones), else the closed fallback on ``result``."""
    folds = class_folds(sorted(set(labels)), FOLDS, args.seed) if args.mode == "frozen" else []
    closed = closed_verdict(result)
    if not folds or features is None:
        log.info("same/different verdict calibrated on held-out photos of the training classes")
        return closed
    distances, dissimilar = [], []
    labels_arr = np.asarray(labels)
    for k, fold in enumerate(folds):
        held = np.isin(labels_arr, fold)
        head = train_head(model, args, features, labels_arr, ~held & ~is_val, ~held & is_val, device)
        rows = np.flatnonzero(held)
        i, j, y = sample_pairs(list(labels_arr[rows]), PAIRS_PER_FOLD, seed=100 + k)
        with torch.no_grad():
            emb = head(features[rows].to(device)).float().cpu().numpy()
        distances.append(np.linalg.norm(emb[i] - emb[j], axis=1))
        dissimilar.append(y)
        log.info("calibration fold %d/%d: held out %s", k + 1, len(folds), ", ".join(fold))
    d, y = np.concatenate(distances), np.concatenate(dissimilar)
    record = {
        "method": "cross-class",
        "folds": folds,
        "pairs": len(d),
        "threshold_closed": closed.threshold,  # what the held-out photos of the training classes gave
        "platt_closed": list(closed.platt) if closed.platt is not None else None,
    }
    return Verdict(calibrate_threshold(d, y), fit_platt(d, 1 - y), record)


def closed_verdict(result: EvalResult) -> Verdict:
    """Threshold and probability fitted on the first validation set's pairs (held-out photos of the training
    classes), the way every checkpoint was calibrated before cross-class calibration."""
    if not result.pairs:
        return Verdict(result.threshold, None, {"method": "none"})
    name = next(iter(result.pairs))
    i, j, y = result.pairs[name]
    emb = result.embeddings[name]
    d = np.linalg.norm(emb[i] - emb[j], axis=1)
    return Verdict(result.threshold, fit_platt(d, 1 - y), {"method": f"{name} pairs", "pairs": len(d)})


def train_head(
    model: SiameseNetwork,
    args: argparse.Namespace,
    features: torch.Tensor,
    labels: np.ndarray,
    train: np.ndarray,
    select: np.ndarray,
    device: torch.device,
) -> EmbeddingHead:
    """A fresh head of ``model``'s kind trained on the ``train`` rows as ``imgsim train`` trains in frozen mode
    (same options and schedule, best epoch by MAP@R of the ``select`` rows), in eval mode."""
    config = model.config
    torch.manual_seed(args.seed)
    head = EmbeddingHead(features.shape[1], config.embedding_dim, config, model.backbone.imagenet_head()).to(device)
    inputs, names = features[train], [str(label) for label in labels[train]]
    head.fit_pca(inputs.to(device))
    batches = PairBatches.create(args, names, rank=0, world_size=1)
    steps_per_epoch = args.steps_per_epoch or len(batches)
    total = args.max_steps or steps_per_epoch * args.epochs
    optimizer = torch.optim.AdamW(
        [p for p in head.parameters() if p.requires_grad], lr=args.lr, weight_decay=args.weight_decay
    )
    ctx = StepContext(
        module=head,
        frozen=True,
        loss_fn=build_loss(args.loss, args.margin),
        optimizer=optimizer,
        scheduler=warmup_cosine(optimizer, args.warmup, total),
        device=device,
        amp=device.type == "cuda" and not args.no_amp,
        distill=args.distill if config.pretrained else 0.0,
        teacher=None,
        class_to_idx={c: k for k, c in enumerate(sorted(set(names)))},
    )
    step, best, best_state, stale = 0, -math.inf, head.state_dict(), 0
    for epoch in range(math.ceil(total / steps_per_epoch)):
        batches.set_epoch(epoch)
        step, _ = train_one_epoch(ctx, batches, inputs, None, step, steps_per_epoch, total, progress=False)
        score = _selection_score(head, features, labels, train, select, device) if select.any() else float(step)
        stale = 0 if score > best else stale + 1
        if score > best:
            best, best_state = score, {k: v.clone() for k, v in head.state_dict().items()}
        if stale >= args.patience or step >= total:
            break
    head.load_state_dict(best_state)
    return head.eval()


@torch.no_grad()
def _selection_score(
    head: EmbeddingHead,
    features: torch.Tensor,
    labels: np.ndarray,
    train: np.ndarray,
    select: np.ndarray,
    device: torch.device,
) -> float:
    """MAP@R of the ``select`` rows queried against ``train`` and ``select``: ``imgsim train``'s choice of epoch."""
    rows = np.concatenate([np.flatnonzero(train), np.flatnonzero(select)])
    emb = head.eval()(features[rows].to(device)).float().cpu().numpy()
    queries = np.arange(int(train.sum()), len(rows))
    return float(retrieval_metrics(emb, list(labels[rows]), queries=queries)["map_at_r"])
