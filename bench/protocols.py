"""The evaluation protocols of bench_quality and bench_bounds on ../shared/data/dogs, and their measurements.

530 of the 550 photos of each breed are ImageNet *training* photos (``n0…_*.jpg``): the pretrained backbones
learnt these very photos with these very labels. The ``ILSVRC2012_val_*`` photos (228 here, 15-41 per breed)
are ImageNet validation photos, never trained on. So:

- **clean closed set** (the headline): queries = the 228 validation photos, database = all 5,500; the head is
  trained with ``--exclude '*/ILSVRC2012_val_*'`` on the other 5,272 (its own 20 % selection split);
- **mixed closed set**: ``imgsim train``'s default split (20 % of every breed held out: 1,100 queries, 1,045 of
  them photos the backbone trained on) queried against all 5,500;
- **open set**, 3 seeded splits: 4 breeds held out whole, their 2,200 photos the database; the queries are all of
  them (mixed, leave-one-out) or only their validation photos (clean; 78-97 per split, one photo = 0.01 of R@1).

Pairs for ROC-AUC and the verdict: 4,000 seeded balanced pairs among the queries (as ``imgsim eval``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from model.core.checkpoint import Checkpoint
from model.core.network import frozen_embedding
from model.data.galleries import Gallery, Item, make_splits, scan_gallery
from model.evaluation.calibration import probability_metrics
from model.evaluation.metrics import calibrate_threshold, retrieval_metrics, sample_pairs, verification_metrics
from model.inference.embedder import Embedder
from model.inference.features import cached_features

ROOT = Path(__file__).resolve().parents[1]
DOGS = Path(os.environ.get("IMGSIM_DOGS", ROOT.parent / "shared" / "data" / "dogs"))
CLEAN = "*/ILSVRC2012_val_*"  # the --exclude / --queries glob of the clean photos
N_PAIRS = 4000


@dataclass
class Protocol:
    """A database of gallery items, the rows that query it (None: every row, leave-one-out), and pairs."""

    name: str
    items: list[Item]
    queries: np.ndarray | None

    @property
    def labels(self) -> list[str]:
        return [i.label for i in self.items]

    def pairs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Seeded balanced pairs among the query rows: (rows i, rows j, 1 = different class)."""
        rows = np.arange(len(self.items)) if self.queries is None else self.queries
        i, j, y = sample_pairs([self.items[r].label for r in rows], N_PAIRS, seed=0)
        return rows[i], rows[j], y


def is_clean(item: Item) -> bool:
    return Path(item.path).name.startswith("ILSVRC2012_val_")


def dogs() -> Gallery:
    if not DOGS.is_dir():
        raise FileNotFoundError(f"No dog photos at {DOGS}; set IMGSIM_DOGS.")
    return scan_gallery(DOGS)


def clean_closed(gallery: Gallery) -> Protocol:
    rows = np.array([k for k, item in enumerate(gallery.items) if is_clean(item)])
    return Protocol("clean closed", gallery.items, rows)


def mixed_closed(gallery: Gallery) -> Protocol:
    """``imgsim train``'s default split: its held-out photos query the training photos and themselves."""
    splits = make_splits(gallery.items, seed=0, val_fraction=0.2)
    items = splits.train + splits.val
    return Protocol("mixed closed", items, np.arange(len(splits.train), len(items)))


def open_split(gallery: Gallery, seed: int, clean: bool) -> Protocol:
    """``imgsim train --num-open-classes 4 --seed SEED``'s unseen breeds."""
    items = make_splits(gallery.items, seed=seed, val_fraction=0.2, num_open_classes=4).val_open
    queries = np.array([k for k, item in enumerate(items) if is_clean(item)]) if clean else None
    return Protocol(f"open s{seed} {'clean' if clean else 'mixed'}", items, queries)


def embed(ckpt: Checkpoint, protocol: Protocol, precision: str, cache: Path) -> tuple[np.ndarray, np.ndarray]:
    """(the checkpoint's embeddings, the frozen backbone's unit features) of the protocol's items.

    fp32: the head on the backbone's cached features (what training measures; the ONNX fp32 engine matches it
    to 1e-6). int8: the int8 engine on the photos, end to end, as the service embeds them; the frozen baseline
    stays the fp32 backbone's."""
    config = ckpt.config
    features = cached_features(
        ckpt.model.backbone, config.backbone, DOGS, protocol.items, cache, image_size=config.image_size, progress=False
    )
    frozen = frozen_embedding(features).numpy()
    if precision == "fp32":
        with torch.no_grad():
            return ckpt.model.head.eval()(features).float().numpy(), frozen
    embedder = Embedder(ckpt, device="cpu", precision=precision)
    assert embedder.precision == precision, f"{ckpt.path}: asked for {precision}, got {embedder.precision}"
    result = embedder.embed_files([DOGS / i.path for i in protocol.items], progress=False)
    assert result.ok == list(range(len(protocol.items))), "every photo decodes"
    return result.embeddings, frozen


def quality(embeddings: np.ndarray, protocol: Protocol) -> dict[str, float]:
    """Recall@1, MAP@R and pair ROC-AUC."""
    retrieval = retrieval_metrics(embeddings, protocol.labels, queries=protocol.queries)
    i, j, y = protocol.pairs()
    auc = verification_metrics(np.linalg.norm(embeddings[i] - embeddings[j], axis=1), y)["roc_auc"]
    return {"r1": retrieval["recall_at_1"], "map_at_r": retrieval["map_at_r"], "auc": auc}


def verdict(embeddings: np.ndarray, protocol: Protocol, ckpt: Checkpoint) -> dict[str, float]:
    """Accuracy of same/different at the checkpoint's threshold, at the one calibrated on its training breeds'
    held-out photos (the way before), and at an oracle fitted on these very pairs; Brier and ECE of its
    same_probability."""
    i, j, y = protocol.pairs()
    d = np.linalg.norm(embeddings[i] - embeddings[j], axis=1)

    def accuracy(t: float) -> float:
        return float(((d >= t) == y.astype(bool)).mean())

    out = {
        "shipped": accuracy(ckpt.threshold),
        "closed": accuracy(float(ckpt.calibration.get("threshold_closed", ckpt.threshold))),
        "oracle": accuracy(calibrate_threshold(d, y)),
    }
    if ckpt.platt is not None:
        out.update(probability_metrics(d, 1 - y, ckpt.platt))
    return out
