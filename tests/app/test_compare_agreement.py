"""``imgsim compare`` and ``POST /v1/compare`` give the same answer on the same two files."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.cli import main
from app.settings import Settings
from tests.conftest import draw_shape


def test_the_cli_and_the_api_agree(
    settings: Settings,
    make_client: Callable[[Settings], object],
    gallery_files: list[Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    # A PNG, and a JPEG big enough that JPEG draft decoding changes its pixels: both paths must decode alike.
    big = draw_shape("red_circles", np.random.default_rng(5), size=72).resize((400, 300), Image.Resampling.BICUBIC)
    big.save(tmp_path / "big.jpg", quality=90)
    files = {"small": gallery_files[0], "same class": gallery_files[1], "big": tmp_path / "big.jpg"}
    # The CLI picks its engine itself (auto: ONNX Runtime on the CPU); the service runs the same one here.
    with make_client(settings.model_copy(update={"engine": "auto"})) as client:  # type: ignore[attr-defined]
        for first, second in (("small", "same class"), ("small", "big")):
            a, b = files[first], files[second]
            r = client.post(
                "/v1/compare", files=[("images", (a.name, a.read_bytes())), ("images", (b.name, b.read_bytes()))]
            )
            assert r.status_code == 200, r.text
            api = r.json()
            capsys.readouterr()
            argv = ["compare", str(a), str(b), "--checkpoint", str(settings.checkpoint), "--device", "cpu", "--json"]
            assert main(argv) == 0
            cli = json.loads(capsys.readouterr().out)
            assert cli.keys() == api.keys() - {"model"}
            assert (cli["same"], cli["threshold"]) == (api["same"], api["threshold"]), (first, second)
            # One forward pass each, on equal pixels: equal up to ONNX Runtime's thread-count rounding.
            assert cli["dissimilarity"] == pytest.approx(api["dissimilarity"], abs=1e-5), (first, second)
            assert cli["similarity"] == pytest.approx(api["similarity"], abs=1e-5), (first, second)
            assert cli["same_probability"] == pytest.approx(api["same_probability"], abs=1e-5), (first, second)
