"""The CPU-side parts of bench/gpu_check.py: the agreement maths, the report, the clear failure without
CUDA, and a toy end-to-end run on the CPU (--cpu-smoke) with the tiny model."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from bench import gpu_check

ROOT = Path(__file__).resolve().parents[1]
# The tiny model of tests/conftest.py (not imported: `import conftest` is ambiguous with subfolder conftests).
TINY_CONFIG = {"backbone": "seed-cnn", "embedding_dim": 16, "image_size": 64}


def test_cosine_rows_matches_torch() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(20, 16)), rng.normal(size=(20, 16))
    expected = torch.nn.functional.cosine_similarity(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    np.testing.assert_allclose(gpu_check.cosine_rows(a, b), expected, atol=1e-12)
    x = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]])
    y = np.array([[5.0, 0.0], [1.0, 0.0], [-3.0, -4.0]])
    np.testing.assert_allclose(gpu_check.cosine_rows(x, y), [1.0, 0.0, -1.0], atol=1e-12)


def test_agreement_passes_only_when_every_row_is_close() -> None:
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(50, 32)).astype(np.float32)
    close = ref + 1e-4 * rng.normal(size=ref.shape).astype(np.float32)  # fp16-sized noise
    assert gpu_check.agreement(ref, close)["passed"]
    bad = close.copy()
    bad[7] = rng.normal(size=32)  # one image embedded differently is enough to fail
    result = gpu_check.agreement(ref, bad)
    assert not result["passed"] and result["min_cosine"] < gpu_check.THRESHOLD <= result["mean_cosine"] + 0.05


def test_without_cuda_it_stops_at_once_with_a_clear_message(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main(["--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "no CUDA device" in err and "--gpus all" in err and "--cpu-smoke" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path of the shell wrapper")
def test_shell_wrapper_fails_fast_without_cuda() -> None:
    result = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_check.sh")], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "no CUDA device" in result.stderr


@pytest.mark.slow
def test_cpu_smoke_run_writes_json_and_markdown(tmp_path: Path, synthetic_gallery: Path) -> None:
    pytest.importorskip("model.training.train")
    tiny = (
        f"--backbone {TINY_CONFIG['backbone']} --embedding-dim {TINY_CONFIG['embedding_dim']} "
        f"--image-size {TINY_CONFIG['image_size']} --no-pretrained --batch-size 8 --workers 0"
    )
    out = tmp_path / "out"
    code = gpu_check.main(
        [
            "--cpu-smoke",
            "--data",
            str(synthetic_gallery),
            "--out",
            str(out),
            "--steps",
            "2",
            "--sample",
            "6",
            "--batch-size",
            "16",
            "--train-args",
            tiny,
        ]
    )
    assert code == 0
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["smoke"] and report["train"]["steps"] == 2 and report["sample"] == 6
    assert report["embed"]["cpu_decode"]["images"] == 4 * 12
    for row in report["agreement"].values():  # CPU against the CPU reference: identical
        assert row["passed"] and row["min_cosine"] > 0.99999
    md = (out / "gpu_check.md").read_text()
    assert md.startswith("### GPU check (CPU smoke run") and "steps/s" in md and "images/s" in md
