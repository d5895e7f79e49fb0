"""Re-indexing with another model: `index update` refuses to mix models and says how; `--rebuild` and
`index build --replace` build anew beside the old gallery, carry the service's uploads over, then swap."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from app.cli import main
from index import GalleryIndex, NewItem, build_gallery_index
from model.core.checkpoint import load_checkpoint, save_checkpoint
from model.inference.embedder import Embedder


@pytest.fixture
def other_checkpoint(tiny_checkpoint: Path, tmp_path: Path) -> Path:
    other = load_checkpoint(tiny_checkpoint)
    for p in other.model.parameters():
        p.data.add_(0.01)
    save_checkpoint(other, tmp_path / "other" / "best.pt")
    return tmp_path / "other" / "best.pt"


def test_another_model_rebuilds_with_the_uploads(
    synthetic_gallery: Path,
    tiny_checkpoint: Path,
    other_checkpoint: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    idx = tmp_path / "idx"
    build_gallery_index(tiny_checkpoint, synthetic_gallery, idx, num_workers=0, progress=False)
    upload = Image.new("RGB", (40, 30), (200, 20, 200))
    (idx / "media").mkdir(exist_ok=True)
    upload.save(idx / "media" / "upload.jpg")
    vector = Embedder(tiny_checkpoint, device="cpu", engine="torch").embed_images([upload])
    with GalleryIndex.open(idx) as gi:  # as the service adds one: durable when add returns
        gi.add(vector, [NewItem("media/upload.jpg", "purple", "f" * 64, 40, 30)])

    base = ["--index", str(idx), "--checkpoint", str(other_checkpoint), "--workers", "0", "--device", "cpu"]
    assert main(["index", "update", *base]) == 2
    assert "Add --rebuild" in capsys.readouterr().err
    assert GalleryIndex.open(idx).model_hash == load_checkpoint(tiny_checkpoint).hash  # untouched

    assert main(["index", "update", *base, "--rebuild", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["count"], report["index_dir"]) == (49, str(idx))  # the folder's 48 and the upload
    rebuilt = GalleryIndex.open(idx)
    assert rebuilt.model_hash == load_checkpoint(other_checkpoint).hash and rebuilt.count == 49
    [carried] = rebuilt.items(label="purple")[0]
    assert carried.sha256 == "f" * 64 and (idx / carried.path).is_file()
    assert not any(p.name.startswith(".idx") for p in tmp_path.iterdir())  # no scratch or old copy left

    with GalleryIndex.open(idx, writer=True):  # a service writing to it: the rebuild stops, naming it
        assert main(["index", "update", *base, "--rebuild"]) == 2
        assert "is being written by" in capsys.readouterr().err and GalleryIndex.open(idx).count == 49
    build = ["index", "build", "--data", str(synthetic_gallery), "--index", str(idx), "--workers", "0"]
    assert main([*build, "--checkpoint", str(tiny_checkpoint)]) == 2
    assert "Add --replace" in capsys.readouterr().err
    assert main([*build, "--checkpoint", str(tiny_checkpoint), "--replace"]) == 0
    back = GalleryIndex.open(idx)
    assert back.model_hash == load_checkpoint(tiny_checkpoint).hash and back.count == 49
    assert back.items(label="purple")[1] == 1
