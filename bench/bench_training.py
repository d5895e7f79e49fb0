"""Training speed: optimisation steps per second with cached features (frozen backbone) and full fine-tuning.

    .venv/bin/python -m bench.bench_training [--quick]

Both modes run the real step of ``model.training.loop`` (contrastive loss over every pair of a class-balanced batch)
on the default architecture (efficientnet-lite0, anchored 256-d head). Inputs are fixed random tensors of
the right shape, so only the optimisation is timed: decoding is measured by bench_embedding. Medians over
repeats, both modes in the same run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import statistics
import time
from typing import Any

import torch

from bench.bench_embedding import machine_line
from model.core.network import ModelConfig, SiameseNetwork
from model.training.loop import StepContext, step_loss
from model.training.losses import ContrastiveLoss

CLASSES, M_PER_CLASS = 10, 8  # the defaults on ../shared/data/dogs: 80 images, 3,160 pairs per batch


def _context(module: torch.nn.Module, params: list[dict[str, Any]], frozen: bool) -> StepContext:
    optimizer = torch.optim.AdamW(params, weight_decay=1e-4)
    return StepContext(
        module=module,
        frozen=frozen,
        loss_fn=ContrastiveLoss(1.0),
        optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0),
        device=torch.device("cpu"),
        amp=False,
        distill=0.0,
        teacher=None,
        class_to_idx={},
    )


def steps_per_second(ctx: StepContext, inputs: torch.Tensor, steps: int, repeats: int) -> float:
    targets = torch.arange(CLASSES).repeat_interleave(M_PER_CLASS)
    ctx.module.train()
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            loss = step_loss(ctx, inputs, targets)
            ctx.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            ctx.optimizer.step()
        rates.append(steps / (time.perf_counter() - start))
    return statistics.median(rates)


def run(quick: bool = False) -> str:
    torch.manual_seed(0)
    model = SiameseNetwork(ModelConfig())
    batch = CLASSES * M_PER_CLASS
    head_params = [p for p in model.head.parameters() if p.requires_grad]
    frozen = _context(model.head, [{"params": head_params, "lr": 1e-3}], frozen=True)
    features = torch.randn(batch, model.backbone.feature_dim)
    frozen_rate = steps_per_second(frozen, features, steps=20 if quick else 50, repeats=3)

    finetune = _context(
        model,
        [{"params": head_params, "lr": 1e-3}, {"params": list(model.backbone.parameters()), "lr": 1e-4}],
        frozen=False,
    )
    images = torch.randn(batch, 3, 224, 224)
    finetune_rate = steps_per_second(finetune, images, steps=1 if quick else 2, repeats=3)

    epoch_steps = math.ceil(4400 / batch)  # 80 % of the 5,500 dog photos, one pass
    command = "python -m bench.bench_training" + (" --quick" if quick else "")
    rows = [
        ("frozen backbone, cached features (the default)", frozen_rate, 1.0),
        ("full fine-tuning at 224 px", finetune_rate, finetune_rate / frozen_rate),
    ]
    lines = [
        "### Training speed",
        "",
        f"{machine_line()}  ",
        f"Command: `{command}`, {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC. Batch: {CLASSES} classes x "
        f"{M_PER_CLASS} images ({batch} images, {batch * (batch - 1) // 2:,} pairs), efficientnet-lite0, "
        "anchored 256-d head, AdamW, fp32 on CPU. Medians of 3 repeats, both modes in this run.",
        "",
        "| mode | steps/s | images/s | one epoch of 4,400 images | vs cached features |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, rate, ratio in rows:
        lines.append(f"| {name} | {rate:.2f} | {rate * batch:,.0f} | {epoch_steps / rate:,.1f} s | {ratio:.4f}x |")
    lines.append("")
    lines.append(
        "Fine-tuning also decodes and augments every image each step; cached-feature mode pays decoding "
        "once, when the features are computed (bench_embedding measures that rate)."
    )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    print(run(parser.parse_args().quick))


if __name__ == "__main__":
    main()
