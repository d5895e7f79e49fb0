"""``imgsim eval`` and ``imgsim compare``: measure a checkpoint on a gallery, or compare two photos."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from model.core.checkpoint import load_checkpoint
from model.core.device import resolve_device
from model.core.images import ImageError, load_image, probe
from model.data.galleries import scan_gallery
from model.evaluation.evaluate import EvalResult, EvalSet, evaluate_sets
from model.evaluation.metrics import roc_curve
from model.evaluation.plots import plot_distance_histogram, plot_montage, plot_roc
from model.inference.compare import Comparison, compare
from model.inference.embedder import Embedder

REPORT_KEYS = (
    "recall_at_1",
    "recall_at_5",
    "recall_at_10",
    "map_at_r",
    "precision_at_1",
    "roc_auc",
    "eer",
    "accuracy",
)


def evaluate_checkpoint(
    checkpoint: str | Path,
    data: str | Path,
    *,
    out: str | Path | None = None,
    device: str = "auto",
    workers: int = 2,
    progress: bool = True,
    montage_queries: int = 6,
) -> dict[str, Any]:
    """Leave-one-out retrieval over every image of ``data`` and pair verification at the checkpoint's
    threshold, each beside the frozen pretrained backbone; writes the plots to ``out``."""
    ckpt = load_checkpoint(checkpoint)
    gallery = scan_gallery(data, min_per_class=1)
    frozen = ckpt.train_args.get("mode", "frozen") == "frozen" and ckpt.config.pretrained
    cache_dir = Path(ckpt.path).parent / "cache" if ckpt.path else None
    s = EvalSet("all", gallery.items)
    result = evaluate_sets(
        ckpt.model,
        gallery.root,
        [s],
        device=resolve_device(device),
        cache_dir=cache_dir,
        frozen=frozen,
        workers=workers,
        progress=progress,
        with_baseline=True,
        threshold=ckpt.threshold,
    )
    report: dict[str, Any] = {k: result.retrieval["all"].get(k, result.verification["all"].get(k)) for k in REPORT_KEYS}
    report["threshold"] = ckpt.threshold
    baseline = result.baseline.get("all", {})
    report["baseline"] = {k: baseline.get(k) for k in (*REPORT_KEYS, "threshold")}
    report.update(
        images=len(gallery.items),
        classes=len(gallery.classes),
        checkpoint=str(checkpoint),
        model_hash=ckpt.hash,
        backbone=ckpt.config.backbone,
    )
    out_dir = Path(out) if out else Path(ckpt.path or ".").parent / f"eval-{Path(data).resolve().name}"
    out_dir.mkdir(parents=True, exist_ok=True)
    _plots(result, gallery.root, [i.path for i in gallery.items], ckpt.threshold, out_dir, montage_queries)
    report["plots"] = str(out_dir)
    (out_dir / "metrics.json").write_text(json.dumps(report, indent=2))
    return report


def _plots(
    result: EvalResult, root: Path, paths: list[str], threshold: float, out: Path, n_queries: int
) -> None:
    emb, labels, (i, j, y) = result.embeddings["all"], result.labels["all"], result.pairs["all"]
    distances = np.linalg.norm(emb[i] - emb[j], axis=1)
    curves = {}
    for name, e in (("trained", emb), ("frozen backbone", result.baseline_embeddings.get("all"))):
        if e is None:
            continue
        d = np.linalg.norm(e[i] - e[j], axis=1)
        fpr, tpr, _ = roc_curve(d, y)
        curves[name] = (fpr, tpr, float(np.trapezoid(tpr, fpr)))
    plot_roc(curves, out / "roc.png")
    plot_distance_histogram(distances, y, threshold, out / "distances.png")
    rng = np.random.default_rng(0)
    rows = []
    for q in rng.choice(len(paths), size=min(n_queries, len(paths)), replace=False):
        d = np.linalg.norm(emb - emb[q], axis=1)
        d[q] = np.inf
        nearest = np.argsort(d)[:5]
        thumbs = [(load_image(root / paths[n], draft_size=160), labels[n], float(d[n])) for n in nearest]
        rows.append((load_image(root / paths[q], draft_size=160), labels[q], thumbs))
    plot_montage(rows, out / "montage.png")


def format_report(report: dict[str, Any]) -> str:
    lines = [
        f"{report['images']} images, {report['classes']} classes; checkpoint {report['checkpoint']}",
        f"{'metric':<16}{'trained':>10}{'baseline':>10}{'change':>10}",
    ]
    for key in (*REPORT_KEYS, "threshold"):
        value, base = report.get(key), report["baseline"].get(key)
        if value is None:
            continue
        change = f"{value - base:+.3f}" if isinstance(base, float) and key != "threshold" else ""
        lines.append(
            f"{key:<16}{value:>10.3f}{(base if base is not None else float('nan')):>10.3f}{change:>10}"
        )
    lines.append(
        "baseline = the frozen pretrained backbone's pooled features (unit length); eer lower is better"
    )
    lines.append(
        "accuracy: trained at the checkpoint's threshold (calibrated at training time); baseline at a threshold "
        "calibrated on these very pairs (optimistic)"
    )
    lines.append(f"plots: {report['plots']}/roc.png, distances.png, montage.png")
    return "\n".join(lines)


def read_checked(path: str | Path) -> bytes:
    """The file's bytes once its header passed the checks every decode makes; errors name the file."""
    try:
        data = Path(path).read_bytes()
        probe(data)
    except ImageError as exc:
        raise ValueError(f"{path}: {exc.code}: {exc.detail}") from exc
    except OSError as exc:
        raise FileNotFoundError(f"{path}: {exc.strerror or exc}") from exc
    return data


def compare_images(
    image1: str | Path, image2: str | Path, checkpoint: str | Path, device: str = "auto"
) -> Comparison:
    """``imgsim compare``: the verdict ``POST /v1/compare`` gives on the same two files. Each is decoded and
    cropped as the service and the index do (JPEG ``draft`` at the preset's resize size), both are embedded
    in one batch, and :func:`model.inference.compare.compare` gives the answer."""
    uploads = [read_checked(p) for p in (image1, image2)]  # a bad file is named before the model loads
    embedder = Embedder(checkpoint, device=device)
    a, b = embedder.embed_uploads(uploads)
    for path, row in ((image1, a), (image2, b)):
        if isinstance(row, ImageError):
            raise ValueError(f"{path}: {row.code}: {row.detail}") from row
        if isinstance(row, Exception):
            raise ValueError(f"{path}: {row}") from row
    assert isinstance(a, np.ndarray) and isinstance(b, np.ndarray)
    return compare(a, b, embedder.checkpoint)
