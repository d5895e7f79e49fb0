"""Evaluation: leave-one-out retrieval and pair verification, beside the frozen pretrained backbone."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.core.backbones import build_backbone
from model.core.network import SiameseNetwork, frozen_embedding
from model.data.galleries import Item
from model.evaluation.calibration import probability_metrics
from model.evaluation.metrics import calibrate_threshold, retrieval_metrics, sample_pairs, verification_metrics
from model.inference.features import cached_features, compute_features

N_PAIRS = 4000


@dataclass
class EvalSet:
    name: str
    items: list[Item]
    queries: list[int] | None = None  # rows that query; None: every row (leave-one-out)


@dataclass
class EvalResult:
    retrieval: dict[str, dict[str, float]] = field(default_factory=dict)
    verification: dict[str, dict[str, float]] = field(default_factory=dict)
    baseline: dict[str, dict[str, float]] = field(default_factory=dict)
    embeddings: dict[str, np.ndarray] = field(default_factory=dict)
    features: dict[str, torch.Tensor] = field(default_factory=dict)  # backbone features, for the validation loss
    baseline_embeddings: dict[str, np.ndarray] = field(default_factory=dict)
    labels: dict[str, list[str]] = field(default_factory=dict)
    pairs: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=dict)
    threshold: float = 1.0

    def set_verdict(self, threshold: float, platt: tuple[float, float] | None) -> None:
        """Measure every set's pairs at the shipped ``threshold`` (accuracy) and, with ``platt``, the calibration
        of ``same_probability`` (Brier score, expected calibration error)."""
        self.threshold = threshold
        for name, pairs in self.pairs.items():
            distances, dissimilar = _distances(self.embeddings[name], pairs), pairs[2]
            self.verification[name]["accuracy"] = float(((distances >= threshold) == dissimilar.astype(bool)).mean())
            if platt is not None:
                self.verification[name].update(probability_metrics(distances, 1 - dissimilar, platt))

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"threshold": self.threshold}
        for name in self.retrieval:
            out[name] = {**self.retrieval[name], **self.verification.get(name, {})}
            if name in self.baseline:
                out[name]["baseline"] = self.baseline[name]
        return out


def set_pairs(s: EvalSet, labels: list[str], seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fixed, balanced evaluation pairs among the set's query images."""
    rows = np.arange(len(labels)) if s.queries is None else np.asarray(s.queries)
    i, j, y = sample_pairs([labels[r] for r in rows], N_PAIRS, seed=seed)
    return rows[i], rows[j], y


def _distances(emb: np.ndarray, pairs: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    i, j, _ = pairs
    return np.linalg.norm(emb[i] - emb[j], axis=1)


def _measure(
    emb: np.ndarray,
    labels: list[str],
    s: EvalSet,
    pairs: tuple[np.ndarray, np.ndarray, np.ndarray],
    threshold: float | None,
) -> tuple[dict[str, float], dict[str, float]]:
    retrieval = retrieval_metrics(emb, labels, queries=s.queries)
    verification = verification_metrics(_distances(emb, pairs), pairs[2], threshold)
    return retrieval, verification


@torch.no_grad()  # not inference_mode: the backbone converted here may train afterwards
def evaluate_sets(
    model: SiameseNetwork,
    root: Path,
    sets: list[EvalSet],
    *,
    device: torch.device,
    cache_dir: Path | None,
    frozen: bool,
    workers: int = 2,
    progress: bool = True,
    with_baseline: bool = False,
    threshold: float | None = None,
) -> EvalResult:
    """Embed each set and measure it. Without ``threshold``, one is calibrated on the first set's pairs.

    ``frozen``: the model's backbone is the pretrained one, so its features are cached and double as the
    baseline. Otherwise the baseline is a freshly loaded pretrained backbone.
    """
    model.eval().to(device)
    config = model.config
    kw = dict(image_size=config.image_size, num_workers=workers, device=device, progress=progress)
    reference = None
    if with_baseline and not frozen and config.backbone != "seed-cnn":
        reference = build_backbone(config.backbone, pretrained=True, input_norm=config.input_norm).to(device)
    result = EvalResult()
    for s in sets:
        labels = [i.label for i in s.items]
        if frozen:
            features = cached_features(
                model.backbone, config.backbone, root, s.items, cache_dir, desc=s.name, **kw
            )
        else:
            features = compute_features(model.backbone, root, s.items, desc=s.name, **kw)  # type: ignore[arg-type]
        emb = model.head(features.to(device)).float().cpu().numpy()
        result.embeddings[s.name], result.labels[s.name] = emb, labels
        result.features[s.name] = features
        result.pairs[s.name] = set_pairs(s, labels)
        if with_baseline:
            if reference is not None:
                features = cached_features(
                    reference, config.backbone, root, s.items, cache_dir, desc=f"{s.name} (baseline)", **kw
                )
            base = frozen_embedding(features).numpy()
            result.baseline_embeddings[s.name] = base
    first = sets[0].name if sets else None
    if threshold is None and first is not None:
        threshold = calibrate_threshold(
            _distances(result.embeddings[first], result.pairs[first]), result.pairs[first][2]
        )
    result.threshold = float(threshold if threshold is not None else 1.0)
    base_threshold = None
    for s in sets:
        emb, labels, pairs = result.embeddings[s.name], result.labels[s.name], result.pairs[s.name]
        result.retrieval[s.name], result.verification[s.name] = _measure(
            emb, labels, s, pairs, result.threshold
        )
        if s.name in result.baseline_embeddings:
            base = result.baseline_embeddings[s.name]
            if base_threshold is None:  # the baseline gets its own calibration, on the same pairs
                base_threshold = calibrate_threshold(_distances(base, pairs), pairs[2])
            r, v = _measure(base, labels, s, pairs, base_threshold)
            result.baseline[s.name] = {**r, **v, "threshold": base_threshold}
    return result
