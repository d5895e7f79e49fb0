"""Figures for people: the loss curve, the ROC curve, distance histograms and a retrieval montage."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import numpy as np
from PIL import Image


def plot_loss(
    steps: Sequence[int], train_loss: Sequence[float], val: Sequence[tuple[int, float]], out: Path
) -> None:
    """Training loss per step (smoothed) and validation loss per epoch, like the article's plot."""
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, train_loss, alpha=0.3, color="tab:blue", label="train (per step)")
    if len(train_loss) >= 10:
        w = max(len(train_loss) // 30, 5)
        smooth = np.convolve(train_loss, np.ones(w) / w, mode="valid")
        ax.plot(steps[w - 1 :], smooth, color="tab:blue", label=f"train (mean of {w})")
    if val:
        ax.plot(
            [s for s, _ in val], [v for _, v in val], "o-", color="tab:orange", label="validation (per epoch)"
        )
    ax.set_xlabel("step")
    ax.set_ylabel("contrastive loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_roc(curves: dict[str, tuple[np.ndarray, np.ndarray, float]], out: Path) -> None:
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, (fpr, tpr, auc) in curves.items():
        ax.plot(fpr, tpr, label=f"{name} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set_xlabel("false positive rate (different called same)")
    ax.set_ylabel("true positive rate (same called same)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_distance_histogram(
    distances: np.ndarray, dissimilar: np.ndarray, threshold: float, out: Path
) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    bins = np.linspace(0, max(2.0, float(distances.max(initial=0))), 60).tolist()
    ax.hist(distances[dissimilar == 0], bins=bins, alpha=0.6, label="similar pairs (same class)")
    ax.hist(distances[dissimilar == 1], bins=bins, alpha=0.6, label="dissimilar pairs")
    ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.2f}")
    ax.set_xlabel("dissimilarity (Euclidean distance)")
    ax.set_ylabel("pairs")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_montage(
    rows: Sequence[tuple[Image.Image, str, Sequence[tuple[Image.Image, str, float]]]], out: Path
) -> None:
    """One row per query: the query, then its neighbours captioned "Dissimilarity: x.xx"."""
    cols = 1 + max((len(n) for _, _, n in rows), default=0)
    fig, axes = plt.subplots(len(rows), cols, figsize=(2.2 * cols, 2.4 * len(rows)), squeeze=False)
    for r, (query, query_label, neighbours) in enumerate(rows):
        for ax in axes[r]:
            ax.axis("off")
        axes[r][0].imshow(query)
        axes[r][0].set_title(f"query\n{query_label}", fontsize=8)
        for c, (image, label, distance) in enumerate(neighbours, start=1):
            axes[r][c].imshow(image)
            axes[r][c].set_title(f"{label}\nDissimilarity: {distance:.2f}", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
