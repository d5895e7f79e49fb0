"""End to end on synthetic shapes: train a few steps, evaluate, reload, and get identical embeddings."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from app.cli import main
from model.core.checkpoint import load_checkpoint
from model.core.images import load_image
from model.inference.embedder import Embedder

TINY = [
    "--backbone",
    "seed-cnn",
    "--mode",
    "finetune",
    "--embedding-dim",
    "16",
    "--hidden-dim",
    "32",
    "--image-size",
    "64",
    "--m-per-class",
    "4",
    "--workers",
    "0",
    "--no-progress",
]
# The pretrained efficientnet-lite0 on small images: frozen and fine-tuning tests.
SMALL = ["--image-size", "64", "--embedding-dim", "16", "--hidden-dim", "32", "--m-per-class", "4", "--workers", "0"]


def train_argv(gallery: Path, out: Path, *options: str) -> list[str]:
    return ["train", "--data", str(gallery), "--out", str(out), *options]


def test_train_eval_reload_end_to_end(synthetic_gallery: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    options = [*TINY, "--epochs", "2", "--steps-per-epoch", "3", "--num-open-classes", "1"]
    assert main(train_argv(synthetic_gallery, run, *options)) == 0
    for name in ("best.pt", "last.pt", "loss.png", "metrics.json"):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"closed", "open", "threshold"} <= metrics.keys()
    assert "baseline" in metrics["closed"] and 0.0 <= metrics["closed"]["roc_auc"] <= 1.0

    ckpt = load_checkpoint(run / "best.pt")
    assert ckpt.threshold == metrics["threshold"] > 0
    # Fine-tuning: no fold heads to train in seconds, so the held-out photos of the training classes calibrate.
    assert ckpt.calibration["method"] == "closed pairs" and ckpt.platt is not None
    assert len(ckpt.splits["val_open"]) == 12 and len(ckpt.class_names) == 3
    assert ckpt.train_args["data_fingerprint"] and ckpt.metrics["closed"]["recall_at_1"] >= 0

    capsys.readouterr()
    assert (
        main(
            ["eval", "--checkpoint", str(run / "best.pt"), "--data", str(synthetic_gallery), "--json", "--workers", "0"]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    for key in ("recall_at_1", "recall_at_5", "map_at_r", "roc_auc", "threshold"):
        assert isinstance(report[key], float) and isinstance(report["baseline"][key], float), key
    assert (Path(report["plots"]) / "montage.png").is_file()

    images = [load_image(p) for p in sorted(synthetic_gallery.glob("*/*.png"))[:6]]
    first = Embedder(run / "best.pt", device="cpu").embed_images(images)
    again = Embedder(load_checkpoint(run / "best.pt"), device="cpu").embed_images(images)
    assert np.array_equal(first, again)

    a, b = sorted(synthetic_gallery.glob("red_circles/*.png"))[:2]
    assert main(["compare", str(a), str(b), "--checkpoint", str(run / "best.pt"), "--json"]) == 0
    verdict = json.loads(capsys.readouterr().out)
    assert 0 < verdict["same_probability"] < 1
    assert verdict["dissimilarity"] == pytest.approx(np.sqrt(max(0.0, 2 - 2 * verdict["similarity"])), abs=1e-4)


def test_excluded_photos_stay_out_of_training_and_can_be_the_eval_queries(
    synthetic_gallery: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = tmp_path / "run"
    held = "*_00[0-2].png"  # 3 photos of each of the 4 classes
    assert main(train_argv(synthetic_gallery, run, *TINY, "--max-steps", "1", "--exclude", held)) == 0
    ckpt = load_checkpoint(run / "best.pt")
    used = {p for name in ("train", "val", "val_open") for p, _ in ckpt.splits[name]}
    assert len(used) == 48 - 12 and not any(re.search(r"_00[0-2]\.png$", p) for p in used)
    capsys.readouterr()
    argv = ["eval", "--checkpoint", str(run / "best.pt"), "--data", str(synthetic_gallery), "--queries", held]
    assert main([*argv, "--json", "--workers", "0"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["images"], report["queries"]) == (48, 12)
    assert main([*argv, "--workers", "0"]) == 0
    assert "48 images, 4 classes, 12 of them query;" in capsys.readouterr().out


def test_training_lowers_the_loss_and_resume_continues(synthetic_gallery: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    common = train_argv(synthetic_gallery, run, *TINY, "--steps-per-epoch", "4", "--lr", "3e-3", "--patience", "10")
    assert main([*common, "--epochs", "1"]) == 0
    first = torch.load(run / "last.pt", weights_only=True)
    assert main([*common, "--epochs", "3", "--resume"]) == 0
    resumed = torch.load(run / "last.pt", weights_only=True)
    assert first["step"] == 4 and resumed["step"] == 12
    losses = resumed["history"]["train_loss"]
    assert len(losses) == 12 and np.mean(losses[-4:]) < np.mean(losses[:4])


def test_triplet_loss_trains_through_the_registry(synthetic_gallery: Path, tmp_path: Path) -> None:
    run = tmp_path / "triplet"
    options = ["--loss", "triplet", "--steps-per-epoch", "4", "--epochs", "3", "--lr", "3e-3", "--patience", "10"]
    assert main(train_argv(synthetic_gallery, run, *TINY, *options)) == 0
    last = torch.load(run / "last.pt", weights_only=True)
    assert last["train_args"]["loss"] == "triplet" and last["train_args"]["margin"] is None  # its own, 0.2
    losses = last["history"]["train_loss"]
    assert len(losses) == 12 and all(0 < x < 2.2 for x in losses)  # a violation is at most 2 + the margin
    assert np.mean(losses[-4:]) < np.mean(losses[:4])


def test_article_pair_sampler_trains(synthetic_gallery: Path, tmp_path: Path) -> None:
    options = ["--sampler", "article", "--pairs-per-class", "4", "--batch-size", "8", "--max-steps", "2"]
    assert main(train_argv(synthetic_gallery, tmp_path / "r", *TINY, *options)) == 0
    assert load_checkpoint(tmp_path / "r" / "best.pt").extra == {}


def test_frozen_mode_trains_the_head_only_on_cached_features(synthetic_gallery: Path, tmp_path: Path) -> None:
    run = tmp_path / "frozen"
    options = ["--mode", "frozen", *SMALL, "--no-progress", "--max-steps", "3"]
    assert main(train_argv(synthetic_gallery, run, *options)) == 0
    assert list((run / "cache").glob("features-*.pt"))
    trained = load_checkpoint(run / "best.pt").model
    from model.core.backbones import build_backbone

    pretrained = build_backbone("efficientnet-lite0", pretrained=True).state_dict()
    for key, value in trained.backbone.state_dict().items():
        assert torch.equal(value, pretrained[key]), key
    # The verdict is calibrated on classes held out from training: 2 folds of the 4 classes, a head each.
    ckpt, metrics = load_checkpoint(run / "best.pt"), json.loads((run / "metrics.json").read_text())
    calibration = ckpt.calibration
    assert calibration["method"] == "cross-class" and calibration["pairs"] == 8000
    assert sorted(c for fold in calibration["folds"] for c in fold) == ckpt.class_names
    assert [len(fold) for fold in calibration["folds"]] == [2, 2]
    assert ckpt.platt is not None and ckpt.platt[1] < 0  # farther apart, less likely the same
    assert metrics["calibration"] == calibration and metrics["threshold"] == ckpt.threshold
    assert 0 <= metrics["closed"]["brier"] <= 1 and 0 <= metrics["closed"]["ece"] <= 1


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--backbone", "vgg99"], "Only efficientnet-lite0"),
        (["--mode", "frozen", "--backbone", "seed-cnn"], "seed-cnn trains from scratch"),
        (["--max-steps", "0"], "--max-steps must be at least 1"),
        (["--open-classes", "unicorns"], "not in the gallery"),
        (["--margin", "0"], "--margin must be positive"),
        (["--loss", "triplet", "--sampler", "article"], "pairs share no anchor: use --sampler class-balanced"),
        (
            ["--device", "cuda:0"] if not torch.cuda.is_available() else ["--device", "tpu"],
            "CUDA is not available|Unknown device",
        ),
    ],
)
def test_bad_options_fail_with_clear_messages(
    synthetic_gallery: Path, tmp_path: Path, capsys: pytest.CaptureFixture, extra: list[str], message: str
) -> None:
    assert main(train_argv(synthetic_gallery, tmp_path / "r", *TINY, *extra)) == 2
    err = capsys.readouterr().err
    assert err.startswith("imgsim train: error:")
    assert re.search(message, err), err


@pytest.mark.slow
def test_ddp_with_two_cpu_processes(synthetic_gallery: Path, tmp_path: Path) -> None:
    """``torchrun --nproc_per_node 2`` (gloo on CPU) runs the same training command."""
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "model.training.train",
        "--data",
        str(synthetic_gallery),
        "--out",
        str(run),
        *TINY,
        "--max-steps",
        "3",
        "--m-per-class",
        "2",
        "--classes-per-batch",
        "2",
    ]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ckpt = load_checkpoint(run / "best.pt")
    assert ckpt.extra == {} and (run / "metrics.json").is_file()
    assert torch.load(run / "last.pt", weights_only=True)["step"] == 3


def test_finetune_mode_trains_a_pretrained_backbone(synthetic_gallery: Path, tmp_path: Path) -> None:
    run = tmp_path / "finetune"
    options = ["--mode", "finetune", *SMALL, "--no-progress", "--max-steps", "2", "--lr", "1e-2"]
    assert main(train_argv(synthetic_gallery, run, *options)) == 0
    from model.core.backbones import build_backbone

    trained = load_checkpoint(run / "best.pt").model.backbone.state_dict()
    pretrained = build_backbone("efficientnet-lite0", pretrained=True).state_dict()
    changed = [k for k, v in trained.items() if v.is_floating_point() and not torch.equal(v, pretrained[k])]
    assert changed, "fine-tuning left every backbone weight as it was"
