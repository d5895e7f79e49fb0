"""What caps closed-set Recall@1 on ../shared/data/dogs: bounds from classifiers on the same frozen features.

    .venv/bin/python -m bench.bench_bounds [--quick]

Two closed protocols (bench/protocols.py): clean (the 228 ImageNet validation photos, trained on the other
5,272) and mixed (``imgsim train``'s default split: 1,100 held-out photos, trained on 4,400). For each
EfficientNet-Lite backbone, and for lite0 also with the ImageNet mean/std input checkpoints used before
``input_norm``, on the CPU in minutes:
- frozen features: nearest-neighbour Recall@1 of the unit pooled features (queries against all 5,500);
- linear probe: a softmax classifier on the frozen, centred unit features of the training photos. Its held-out
  accuracy bounds how well any head on these features can tell the breeds apart;
- the backbone's own ImageNet classifier, its logits restricted to the gallery's breeds (each folder matched to
  the ImageNet class of the same name): no training at all. The breeds are Imagewoof's, ten ImageNet breeds
  chosen to be hard to tell apart; the most frequent confusion is reported.
- (not ``--quick``) partial fine-tuning of lite0 on the mixed split: a copy of the last four MBConv blocks and
  the head convolution, trained with the contrastive loss on cached block-11 activations of every training
  photo and of its mirror image. Recall@1 of that embedding alone, and beside the frozen features.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.bench_embedding import machine_line
from bench.protocols import dogs, is_clean
from model.core.backbones import EfficientNetLite, native_image_size
from model.core.network import ModelConfig
from model.core.presets import EvalPreset
from model.data.galleries import Gallery, make_splits
from model.evaluation.metrics import retrieval_metrics
from model.inference.decode import iter_batches
from model.inference.features import cached_features
from model.inference.onnx_export import INPUT_NAME, export_module
from model.training.losses import ContrastiveLoss

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "runs" / "bench" / "quality" / "cache"  # shared with bench_quality: same backbone, same photos
ROWS = (
    ("efficientnet-lite0", "imagenet"),
    ("efficientnet-lite0", "native"),
    ("efficientnet-lite1", "native"),
    ("efficientnet-lite2", "native"),
)
FIRST_TUNED = 12  # blocks 12-15 of 16 (the last stage at 7x7) and the head convolution are trained
EPOCHS, PER_CLASS = 3, 8


class Tail(nn.Module):
    """Blocks ``first``... of efficientnet-lite0, its head convolution and the average pool: -> (n, 1280)."""

    def __init__(self, backbone: EfficientNetLite, first: int) -> None:
        super().__init__()
        net = backbone.net
        self.blocks = nn.ModuleList(net._blocks[first:])
        self.conv, self.bn, self.swish = net._conv_head, net._bn1, net._swish

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return F.adaptive_avg_pool2d(self.swish(self.bn(self.conv(x))), 1).flatten(1)


class Trunk(nn.Module):
    """efficientnet-lite0 up to block ``FIRST_TUNED``: -> (n, 192, 7, 7) at 224 px, its input scaled as the
    backbone scales it."""

    def __init__(self, backbone: EfficientNetLite) -> None:
        super().__init__()
        self.backbone = backbone
        self.net = backbone.net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.backbone.input_norm == "native":
            x = x * self.backbone.input_scale + self.backbone.input_shift
        x = self.net._swish(self.net._bn0(self.net._conv_stem(x)))
        for block in self.net._blocks[:FIRST_TUNED]:
            x = block(x)
        return x


def trunk_activations(backbone: EfficientNetLite, paths: list[Path]) -> torch.Tensor:
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


def restricted_classifier(backbone: EfficientNetLite, feats: torch.Tensor, classes: list[int]) -> torch.Tensor:
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
    backbone: EfficientNetLite, maps: torch.Tensor, labels: torch.Tensor, train: np.ndarray
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


def splits(gallery: Gallery) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(training rows, held-out rows) into ``gallery.items`` of the clean and the mixed protocol."""
    clean = np.array([is_clean(item) for item in gallery.items])
    row = {item.path: k for k, item in enumerate(gallery.items)}
    mixed = make_splits(gallery.items, seed=0, val_fraction=0.2)  # imgsim train's default closed split
    return {
        "clean": (np.flatnonzero(~clean), np.flatnonzero(clean)),
        "mixed": (np.array([row[i.path] for i in mixed.train]), np.array([row[i.path] for i in mixed.val])),
    }


def bounds(
    backbone: EfficientNetLite,
    feats: torch.Tensor,
    gallery: Gallery,
    protocols: dict[str, tuple[np.ndarray, np.ndarray]],
) -> dict[str, dict[str, str]]:
    """Per protocol: frozen Recall@1, linear-probe and ImageNet-classifier accuracy (with the top confusion)."""
    names = sorted({i.label for i in gallery.items})
    labels = torch.tensor([names.index(i.label) for i in gallery.items])
    classes = imagenet_classes(names)
    out = {}
    for name, (train, test) in protocols.items():
        r1 = retrieval_metrics(F.normalize(feats, dim=1).numpy(), [i.label for i in gallery.items], queries=test)
        probe = linear_probe(feats, labels, train, test)
        row = {"frozen": f"{r1['recall_at_1']:.3f}", "probe": f"{accuracy(probe, labels[test]):.3f}"}
        row["probe_confusion"] = top_confusion(probe, labels[test], names)
        if classes is not None:
            zero_shot = restricted_classifier(backbone, feats[test], classes)
            row["classifier"] = f"{accuracy(zero_shot, labels[test]):.3f}"
            row["classifier_confusion"] = top_confusion(zero_shot, labels[test], names)
        out[name] = row
    return out


def run(quick: bool = False) -> str:
    gallery = dogs()
    protocols = splits(gallery)
    n_clean, n_mixed = len(protocols["clean"][1]), len(protocols["mixed"][1])
    lines = [
        "### What caps closed-set Recall@1: classifiers on the same frozen features",
        "",
        f"{machine_line()}  ",
        f"Command: `python -m bench.bench_bounds{' --quick' if quick else ''}`, "
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC. Clean: the {n_clean} ImageNet validation photos (linear "
        f"probe trained on the other {len(gallery.items) - n_clean}); mixed: the default split's {n_mixed} "
        "held-out photos (trained on the rest). Each cell: clean (mixed).",
        "",
        "| backbone | input | frozen features Recall@1 | linear probe accuracy | ImageNet classifier among the 10 "
        "breeds |",
        "|---|---|---:|---:|---:|",
    ]
    confusions = []
    for name, norm in ROWS:
        backbone = EfficientNetLite(name, pretrained=True, input_norm=norm).eval()
        feats = cached_features(
            backbone, name, gallery.root, gallery.items, CACHE, image_size=native_image_size(name), progress=False
        )
        b = bounds(backbone, feats, gallery, protocols)
        c, m = b["clean"], b["mixed"]
        input_name = "[-1, 1] (native)" if norm == "native" else "ImageNet mean/std (before)"
        lines.append(
            f"| {name} | {input_name} | {c['frozen']} ({m['frozen']}) | {c['probe']} ({m['probe']}) | "
            f"{c.get('classifier', '-')} ({m.get('classifier', '-')}) |"
        )
        if norm == "native":
            confusions.append(f"{name}: {c['probe_confusion']} (probe, clean)")
    lines += ["", "Most confused breeds: " + "; ".join(confusions) + "."]
    if not quick:
        lines.append(fine_tune_line(gallery, protocols["mixed"]))
    return "\n".join(lines) + "\n"


def fine_tune_line(gallery: Gallery, mixed: tuple[np.ndarray, np.ndarray]) -> str:
    train, test = mixed
    items = gallery.items
    names = sorted({i.label for i in items})
    labels = torch.tensor([names.index(i.label) for i in items])
    backbone = EfficientNetLite("efficientnet-lite0", pretrained=True).eval()
    feats = cached_features(backbone, "efficientnet-lite0", gallery.root, items, CACHE, progress=False)

    def recall_at_1(emb: torch.Tensor) -> float:
        return float(retrieval_metrics(emb.numpy(), [i.label for i in items], queries=test)["recall_at_1"])

    start = time.perf_counter()
    maps = trunk_activations(backbone, [gallery.root / i.path for i in items])
    cache_seconds = time.perf_counter() - start
    tuned, seconds = fine_tune(backbone, maps, labels, train)
    w = ModelConfig().learned_weight
    centred = F.normalize(feats - feats[train].mean(0), dim=1)
    mixed_emb = torch.cat([(1 - w) ** 0.5 * centred, w**0.5 * tuned], 1)
    return (
        f"- efficientnet-lite0, mixed split: last {16 - FIRST_TUNED} blocks and the head convolution fine-tuned "
        f"({EPOCHS} epochs, mirror images as augmentation; {cache_seconds:.0f} s to cache activations, "
        f"{seconds:.0f} s to train): Recall@1 **{recall_at_1(tuned):.3f}** alone, **{recall_at_1(mixed_emb):.3f}** "
        f"beside the frozen features at weight {w}."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the linear probe only")
    print(run(parser.parse_args().quick))


if __name__ == "__main__":
    main()
