"""One optimisation step and one epoch, for both batch schemes, both training modes and any loss."""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from model.data.sampling import ClassBalancedBatchSampler, article_pairs
from model.training.losses import MetricLoss
from model.training.losses.indices import IndicesTuple, pairs_from


@dataclass
class PairBatches:
    """What one step trains on: index batches (class-balanced; the loss uses all their pairs or triplets) or
    pair lists (article)."""

    sampler: ClassBalancedBatchSampler | None
    labels: Sequence[str]
    pairs_per_class: int
    batch_size: int
    seed: int
    rank: int
    world_size: int
    epoch: int = 0
    dataset: Dataset[tuple[torch.Tensor, int]] | None = None

    @classmethod
    def create(
        cls, args: argparse.Namespace, labels: Sequence[str], rank: int, world_size: int
    ) -> PairBatches:
        sampler = None
        if args.sampler == "class-balanced":
            sampler = ClassBalancedBatchSampler(
                labels,
                args.m_per_class,
                args.classes_per_batch,
                args.steps_per_epoch,
                seed=args.seed,
                rank=rank,
                world_size=world_size,
            )
        return cls(sampler, labels, args.pairs_per_class, args.batch_size, args.seed, rank, world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        if self.sampler is not None:
            return len(self.sampler)
        n_pairs = 2 * self.pairs_per_class * len(set(self.labels))
        return max(1, n_pairs // (self.batch_size * self.world_size))

    def pair_batches(self) -> Iterator[list[tuple[int, int, int]]]:
        pairs = article_pairs(self.labels, self.pairs_per_class, seed=self.seed * 100_003 + self.epoch)
        for b in range(len(self)):
            start = (b * self.world_size + self.rank) * self.batch_size
            yield pairs[start : start + self.batch_size]


@dataclass
class StepContext:
    module: nn.Module  # the head (frozen mode) or the whole network; possibly wrapped in DDP
    frozen: bool
    loss_fn: MetricLoss
    optimizer: torch.optim.Optimizer
    scheduler: Any
    device: torch.device
    amp: bool
    distill: float
    teacher: nn.Module | None
    class_to_idx: dict[str, int]


def warmup_cosine(
    optimizer: torch.optim.Optimizer, warmup: float, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """The learning rate: a linear warm-up over the first ``warmup`` fraction of the steps, then cosine decay."""
    warm = max(1, int(total_steps * warmup))
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, total_steps) / total_steps)),
    )


def structure_loss(embeddings: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Mean squared gap between the batch's cosine similarities and the frozen backbone's.

    It lets training move classes apart while keeping the overall geometry the pretrained backbone learnt
    on ImageNet, which is what carries over to breeds never seen in training.
    """
    reference = F.normalize(reference.float(), dim=-1)
    return (embeddings @ embeddings.T - reference @ reference.T).pow(2).mean()


def step_loss(
    ctx: StepContext, inputs: torch.Tensor, labels: torch.Tensor, indices: IndicesTuple | None = None
) -> torch.Tensor:
    """The loss of the embedded ``inputs`` (on ``indices``, else all that ``labels`` give; + the structure term)."""
    with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=ctx.amp):
        embeddings = ctx.module(inputs).float()
    loss = ctx.loss_fn(embeddings, labels, indices)
    if ctx.distill > 0:
        if ctx.frozen:
            reference = inputs
        else:
            assert ctx.teacher is not None
            with torch.no_grad(), torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=ctx.amp):
                reference = ctx.teacher(inputs)
        loss = loss + ctx.distill * structure_loss(embeddings, reference)
    return loss


def _batches(
    ctx: StepContext, batches: PairBatches, features: torch.Tensor | None, loader: DataLoader | None
) -> Iterator[tuple[torch.Tensor, torch.Tensor, IndicesTuple | None]]:
    """Yields ``(inputs, labels, indices)`` on the device, whatever the scheme and mode: class-balanced
    batches leave the pairs (or triplets) to the loss; the article's pair lists give theirs."""
    if batches.sampler is not None:
        source: Any = loader if loader is not None else batches.sampler
        for batch in source:
            if loader is not None:
                inputs, targets = batch
            else:
                assert features is not None
                inputs = features[batch]
                targets = torch.tensor([ctx.class_to_idx[batches.labels[k]] for k in batch])
            yield inputs.to(ctx.device, non_blocking=True), targets.to(ctx.device), None
        return
    for pairs in batches.pair_batches():
        left, right, y_list = zip(*pairs, strict=True)
        order = list(left) + list(right)
        if features is not None:
            inputs = features[order]
        else:
            assert batches.dataset is not None
            inputs = torch.stack([batches.dataset[k][0] for k in order])
        targets = torch.tensor([ctx.class_to_idx[batches.labels[k]] for k in order], device=ctx.device)
        n = len(pairs)
        arange = torch.arange(2 * n, device=ctx.device)
        indices = pairs_from(arange[:n], arange[n:], torch.tensor(y_list, device=ctx.device))
        yield inputs.to(ctx.device), targets, indices


def train_one_epoch(
    ctx: StepContext,
    batches: PairBatches,
    features: torch.Tensor | None,
    loader: DataLoader | None,
    step: int,
    steps_per_epoch: int,
    total_steps: int,
    progress: bool = True,
    desc: str = "train",
) -> tuple[int, list[float]]:
    ctx.module.train()
    losses: list[float] = []
    bar = tqdm(total=min(steps_per_epoch, total_steps - step), desc=desc, unit="step", disable=not progress)
    for inputs, labels, indices in _batches(ctx, batches, features, loader):
        if len(losses) >= steps_per_epoch or step >= total_steps:
            break
        loss = step_loss(ctx, inputs, labels, indices)
        ctx.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        ctx.optimizer.step()
        ctx.scheduler.step()
        step += 1
        losses.append(float(loss.detach()))
        bar.update()
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    bar.close()
    ctx.module.eval()
    return step, losses


@torch.no_grad()
def validation_loss(head: nn.Module, result: Any, loss_fn: MetricLoss) -> float:
    """The training loss on the first validation set's fixed pairs: the head in training mode, so that it is
    the same quantity as the training curve (for the anchored head, the learnt half)."""
    for name, (i, j, y) in result.pairs.items():
        was_training = head.training
        head.train()
        device = next(head.parameters()).device
        emb = head(result.features[name].to(device)).float().cpu()
        head.train(was_training)
        classes = {label: k for k, label in enumerate(sorted(set(result.labels[name])))}
        labels = torch.tensor([classes[label] for label in result.labels[name]])
        pairs = pairs_from(torch.from_numpy(i), torch.from_numpy(j), torch.from_numpy(y))
        return float(loss_fn(emb, labels, pairs))
    return float("nan")
