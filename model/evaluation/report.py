"""``imgsim eval`` and ``imgsim compare``: measure a checkpoint on a gallery, or compare two photos."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from model.core.checkpoint import load_checkpoint
from model.core.device import resolve_device
from model.core.images import ImageError, load_image, probe
from model.data.galleries import scan_gallery, select_items
from model.evaluation.evaluate import EvalResult, EvalSet, evaluate_sets
from model.evaluation.metrics import calibrate_threshold, roc_curve
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
    "oracle_accuracy",
    "brier",
    "ece",
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
    queries: str | None = None,
) -> dict[str, Any]:
    """Retrieval over the images of ``data`` and pair verification at the checkpoint's threshold, each beside
    the frozen pretrained backbone; writes the plots to ``out``.

    Every image queries all the others (leave-one-out), or only those ``queries`` names (a glob or a file
    listing photos, see :func:`~model.data.galleries.select_items`) query the whole gallery, and the
    verification pairs are drawn among them: photos the backbone and the head never trained on give the
    honest numbers."""
    ckpt = load_checkpoint(checkpoint)
    gallery = scan_gallery(data, min_per_class=1)
    frozen = ckpt.train_args.get("mode", "frozen") == "frozen" and ckpt.config.pretrained
    cache_dir = Path(ckpt.path).parent / "cache" if ckpt.path else None
    query_rows = select_items(gallery, queries) if queries else None
    s = EvalSet("all", gallery.items, queries=query_rows)
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
    result.set_verdict(ckpt.threshold, ckpt.platt)  # Brier and ECE of same_probability, when it has one
    i, j, dissimilar = result.pairs["all"]
    distances = np.linalg.norm(result.embeddings["all"][i] - result.embeddings["all"][j], axis=1)
    oracle = calibrate_threshold(distances, dissimilar)
    result.verification["all"]["oracle_accuracy"] = float(((distances >= oracle) == dissimilar.astype(bool)).mean())
    report: dict[str, Any] = {k: result.retrieval["all"].get(k, result.verification["all"].get(k)) for k in REPORT_KEYS}
    report["threshold"] = ckpt.threshold
    baseline = result.baseline.get("all", {})
    report["baseline"] = {k: baseline.get(k) for k in (*REPORT_KEYS, "threshold")}
    report["baseline"]["oracle_accuracy"] = baseline.get("accuracy")  # its threshold is fitted on these pairs
    report.update(
        images=len(gallery.items),
        queries=len(query_rows) if query_rows is not None else len(gallery.items),
        classes=len(gallery.classes),
        checkpoint=str(checkpoint),
        model_hash=ckpt.hash,
        backbone=ckpt.config.backbone,
    )
    out_dir = Path(out) if out else Path(ckpt.path or ".").parent / f"eval-{Path(data).resolve().name}"
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [i.path for i in gallery.items]
    _plots(result, gallery.root, paths, query_rows, ckpt.threshold, out_dir, montage_queries)
    report["plots"] = str(out_dir)
    (out_dir / "metrics.json").write_text(json.dumps(report, indent=2))
    return report


def _plots(
    result: EvalResult,
    root: Path,
    paths: list[str],
    query_rows: list[int] | None,
    threshold: float,
    out: Path,
    n_queries: int,
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
    candidates = np.arange(len(paths)) if query_rows is None else np.asarray(query_rows)
    for q in rng.choice(candidates, size=min(n_queries, len(candidates)), replace=False):
        d = np.linalg.norm(emb - emb[q], axis=1)
        d[q] = np.inf
        nearest = np.argsort(d)[:5]
        thumbs = [(load_image(root / paths[n], draft_size=160), labels[n], float(d[n])) for n in nearest]
        rows.append((load_image(root / paths[q], draft_size=160), labels[q], thumbs))
    plot_montage(rows, out / "montage.png")


def format_report(report: dict[str, Any]) -> str:
    lines = [
        f"{report['images']} images, {report['classes']} classes"
        + (f", {report['queries']} of them query" if report["queries"] != report["images"] else "")
        + f"; checkpoint {report['checkpoint']}",
        f"{'metric':<16}{'trained':>10}{'baseline':>10}{'change':>10}",
    ]
    for key in (*REPORT_KEYS, "threshold"):
        value, base = report.get(key), report["baseline"].get(key)
        if value is None:
            continue
        change = f"{value - base:+.3f}" if isinstance(base, float) and key != "threshold" else ""
        shown = f"{base:>10.3f}" if base is not None else " " * 10
        lines.append(f"{key:<16}{value:>10.3f}{shown}{change:>10}")
    lines.append(
        "baseline = the frozen pretrained backbone's pooled features (unit length); eer lower is better"
    )
    lines.append(
        "accuracy: trained at the checkpoint's threshold (calibrated at training time); oracle_accuracy and the "
        "baseline's accuracy:\n  at a threshold calibrated on these very pairs (optimistic); brier, ece: of the "
        "checkpoint's same_probability on these pairs"
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
    image1: str | Path, image2: str | Path, checkpoint: str | Path, device: str = "auto", precision: str = "auto"
) -> Comparison:
    """``imgsim compare``: the verdict ``POST /v1/compare`` gives on the same two files. Each is decoded and
    cropped as the service and the index do (JPEG ``draft`` at the preset's resize size), both are embedded
    in one batch, and :func:`model.inference.compare.compare` gives the answer."""
    uploads = [read_checked(p) for p in (image1, image2)]  # a bad file is named before the model loads
    embedder = Embedder(checkpoint, device=device, precision=precision)
    a, b = embedder.embed_uploads(uploads)
    for path, row in ((image1, a), (image2, b)):
        if isinstance(row, ImageError):
            raise ValueError(f"{path}: {row.code}: {row.detail}") from row
        if isinstance(row, Exception):
            raise ValueError(f"{path}: {row}") from row
    assert isinstance(a, np.ndarray) and isinstance(b, np.ndarray)
    return compare(a, b, embedder.checkpoint)
