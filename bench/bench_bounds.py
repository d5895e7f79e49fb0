"""What caps closed-set Recall@1 on ../shared/data/dogs with efficientnet-lite0: bounds on the default split.

    .venv/bin/python -m bench.bench_bounds [--quick]

The closed split is ``imgsim train``'s default (seed 0, 20 % of every breed held out, queried against all the
others). Three measurements, each on the CPU in a few minutes:
- linear probe: a softmax classifier on the frozen, centred unit features of the training images. Its
  held-out accuracy bounds how well any head on these features can tell the breeds apart.
- partial fine-tuning: a copy of the last four MBConv blocks and the head convolution, trained with the
  contrastive loss (class-balanced batches, every pair) on cached block-11 activations of every training image
  and of its mirror image (the only augmentation a cache allows). Recall@1 of that embedding alone, and mixed
  with the frozen anchor at the anchored head's weight.
- the backbone's own ImageNet classifier, its logits restricted to the gallery's breeds (each folder matched
  to the ImageNet class of the same name): no training at all. The breeds of ../shared/data/dogs are
  Imagewoof's, ten ImageNet breeds chosen to be hard to tell apart; the most frequent confusion is reported.
``--quick`` skips the fine-tuning.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.bench_embedding import machine_line
from model.core.backbones import EfficientNetLite0
from model.core.network import ModelConfig
from model.core.presets import EvalPreset
from model.data.galleries import make_splits, scan_gallery
from model.evaluation.metrics import retrieval_metrics
from model.inference.decode import iter_batches
from model.inference.features import cached_features
from model.inference.onnx_export import INPUT_NAME, export_module
from model.training.losses import ContrastiveLoss

ROOT = Path(__file__).resolve().parents[1]
DOGS = Path(os.environ.get("IMGSIM_DOGS", ROOT.parent / "shared" / "data" / "dogs"))
CACHE = ROOT / "runs" / "bench" / "quality" / "cache"  # shared with bench_quality: same backbone, same photos
FIRST_TUNED = 12  # blocks 12-15 of 16 (the last stage at 7x7) and the head convolution are trained
EPOCHS, PER_CLASS = 3, 8


class Tail(nn.Module):
    """Blocks ``first``... of efficientnet-lite0, its head convolution and the average pool: -> (n, 1280)."""

    def __init__(self, backbone: EfficientNetLite0, first: int) -> None:
        super().__init__()
        net = backbone.net
        self.blocks = nn.ModuleList(net._blocks[first:])
        self.conv, self.bn, self.swish = net._conv_head, net._bn1, net._swish

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return F.adaptive_avg_pool2d(self.swish(self.bn(self.conv(x))), 1).flatten(1)


class Trunk(nn.Module):
    """efficientnet-lite0 up to block ``FIRST_TUNED``: -> (n, 192, 7, 7) at 224 px."""

    def __init__(self, backbone: EfficientNetLite0) -> None:
        super().__init__()
        self.net = backbone.net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.net._swish(self.net._bn0(self.net._conv_stem(x)))
        for block in self.net._blocks[:FIRST_TUNED]:
            x = block(x)
        return x


def trunk_activations(backbone: EfficientNetLite0, paths: list[Path]) -> torch.Tensor:
    """(n, 2, 192, 7, 7) float16: the input of block ``FIRST_TUNED`` for each photo and its mirror image, run
    through ONNX Runtime (8x faster than eager PyTorch on this CPU)."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trunk.onnx"
        export_module(Trunk(backbone).eval(), torch.zeros(1, 3, 224, 224), path)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = []
    for batch in iter_batches(paths, EvalPreset(224), 64, workers=2):
        assert len(batch.ok) == len(batch.images), "every photo decodes"
        views = [session.run(None, {INPUT_NAME: x.numpy()})[0] for x in (batch.images, batch.images.flip(-1))]
        out.append(torch.from_numpy(np.stack(views, 1)).half())
    return torch.cat(out)


def linear_probe(feats: torch.Tensor, labels: torch.Tensor, train: np.ndarray, test: np.ndarray) -> torch.Tensor:
    """A linear classifier trained on the training photos; its predictions for the held-out ones."""
    torch.manual_seed(0)
    x = F.normalize(feats - feats[train].mean(0), dim=1) * 10  # centred unit features, a fixed temperature
    probe = nn.Linear(x.shape[1], int(labels.max()) + 1)
    opt = torch.optim.AdamW(probe.parameters(), lr=1e-3, weight_decay=1e-2)
    for _ in range(300):  # full batch; converged well before
        opt.zero_grad()
        F.cross_entropy(probe(x[train]), labels[train]).backward()
        opt.step()
    with torch.no_grad():
        return probe(x[test]).argmax(1)


def accuracy(predicted: torch.Tensor, labels: torch.Tensor) -> float:
    return float((predicted == labels).float().mean())


def imagenet_classes(names: list[str]) -> list[int] | None:
    """The ImageNet class index of each breed folder ("english_foxhound" -> "English foxhound"), or None when
    a folder has no class of that name. The category names are torchvision's metadata (no download)."""
    from torchvision.models import EfficientNet_B0_Weights

    categories = [
        c.lower().replace(" ", "_").replace("-", "_") for c in EfficientNet_B0_Weights.DEFAULT.meta["categories"]
    ]
    if not all(n in categories for n in names):
        return None
    return [categories.index(n) for n in names]


def restricted_classifier(backbone: EfficientNetLite0, feats: torch.Tensor, classes: list[int]) -> torch.Tensor:
    """Predicted breed (index into ``classes``) by the pretrained ImageNet head, among those classes only."""
    with torch.inference_mode():
        return backbone.classify(feats)[:, classes].argmax(1)


def top_confusion(predicted: torch.Tensor, labels: torch.Tensor, names: list[str]) -> str:
    """The pair of breeds mixed up most often (either way round) and its share of all errors."""
    wrong = predicted != labels
    mixed_up = zip(labels[wrong].tolist(), predicted[wrong].tolist(), strict=True)
    pairs = Counter(tuple(sorted((names[t], names[p]))) for t, p in mixed_up)
    ((a, b), n), *_ = pairs.most_common(1)
    return f"{a} / {b}: {n} of {int(wrong.sum())} errors"


def fine_tune(
    backbone: EfficientNetLite0, maps: torch.Tensor, labels: torch.Tensor, train: np.ndarray
) -> tuple[torch.Tensor, float]:
    """Train a copy of the tail and a linear embedding; returns the unit embeddings of every photo and the
    seconds spent training."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    tail = copy.deepcopy(Tail(backbone, FIRST_TUNED))
    head = nn.Linear(1280, 128)
    opt = torch.optim.AdamW([{"params": tail.parameters(), "lr": 1e-4}, {"params": head.parameters()}], lr=1e-3)
    loss_fn = ContrastiveLoss(margin=1.0)
    by_class = [train[labels[train].numpy() == c] for c in range(int(labels.max()) + 1)]
    tail.train()
    for module in tail.modules():  # batch statistics of 80 images would be noisier than the pretrained ones
        if isinstance(module, nn.BatchNorm2d):
            module.eval()
    start = time.perf_counter()
    for _ in range(EPOCHS * len(train) // (PER_CLASS * len(by_class))):
        idx = np.concatenate([rng.choice(members, PER_CLASS, replace=False) for members in by_class])
        views = torch.from_numpy(rng.integers(0, 2, len(idx)))
        emb = F.normalize(head(tail(maps[torch.from_numpy(idx), views].float())), dim=1)
        loss = loss_fn(emb, labels[idx])  # every pair of the batch
        opt.zero_grad()
        loss.backward()
        opt.step()
    seconds = time.perf_counter() - start
    tail.eval()
    with torch.inference_mode():
        emb = torch.cat(
            [F.normalize(head(tail(maps[k : k + 256, 0].float())), dim=1) for k in range(0, len(maps), 256)]
        )
    return emb, seconds


def run(quick: bool = False) -> str:
    gallery = scan_gallery(DOGS)
    splits = make_splits(gallery.items, seed=0, val_fraction=0.2)  # imgsim train's default closed split
    items = splits.train + splits.val
    names = sorted({i.label for i in items})
    labels = torch.tensor([names.index(i.label) for i in items])
    train = np.arange(len(splits.train))
    test = np.arange(len(splits.train), len(items))
    backbone = EfficientNetLite0(pretrained=True).eval()
    feats = cached_features(backbone, "efficientnet-lite0", gallery.root, items, CACHE, progress=False)

    def recall_at_1(emb: torch.Tensor) -> float:
        return float(retrieval_metrics(emb.numpy(), [i.label for i in items], queries=test)["recall_at_1"])

    centred = F.normalize(feats - feats[train].mean(0), dim=1)
    lines = [
        "### What caps closed-set Recall@1 (efficientnet-lite0)",
        "",
        f"{machine_line()}  ",
        f"Command: `python -m bench.bench_bounds{' --quick' if quick else ''}`, "
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC; the default closed split ({len(test)} held-out photos "
        f"queried against the other {len(items) - 1}).",
        "",
        "| embedding | closed-set Recall@1 |",
        "|---|---:|",
        f"| frozen backbone features | {recall_at_1(F.normalize(feats, dim=1)):.3f} |",
        f"| frozen features, centred | {recall_at_1(centred):.3f} |",
        "",
    ]
    probe = linear_probe(feats, labels, train, test)
    lines.append(
        f"- Linear probe on the frozen features: held-out accuracy **{accuracy(probe, labels[test]):.3f}** "
        f"(most confused: {top_confusion(probe, labels[test], names)})."
    )
    classes = imagenet_classes(names)
    if classes is not None:
        zero_shot = restricted_classifier(backbone, feats[test], classes)
        lines.append(
            f"- The pretrained ImageNet classifier among these {len(names)} breeds, untrained: held-out accuracy "
            f"**{accuracy(zero_shot, labels[test]):.3f}** (most confused: "
            f"{top_confusion(zero_shot, labels[test], names)})."
        )
    if not quick:
        start = time.perf_counter()
        maps = trunk_activations(backbone, [gallery.root / i.path for i in items])
        cache_seconds = time.perf_counter() - start
        tuned, seconds = fine_tune(backbone, maps, labels, train)
        w = ModelConfig().learned_weight
        mixed = torch.cat([(1 - w) ** 0.5 * centred, w**0.5 * tuned], 1)
        lines += [
            f"- Last {16 - FIRST_TUNED} blocks and the head convolution fine-tuned ({EPOCHS} epochs, mirror "
            f"images as augmentation; {cache_seconds:.0f} s to cache activations, {seconds:.0f} s to train): "
            f"Recall@1 **{recall_at_1(tuned):.3f}** alone, **{recall_at_1(mixed):.3f}** beside the frozen "
            f"features at weight {w}.",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the linear probe only")
    print(run(parser.parse_args().quick))


if __name__ == "__main__":
    main()
