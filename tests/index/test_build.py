"""Build, update and add from image folders with the tiny checkpoint; the CLI commands end to end."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.cli import main
from index import GalleryIndex, add_files, build_gallery_index, update_gallery_index
from model.core.checkpoint import load_checkpoint
from model.inference.embedder import Embedder


@pytest.fixture
def embedder(tiny_checkpoint: Path) -> Embedder:
    return Embedder(tiny_checkpoint, device="cpu")


def test_build_indexes_gallery_and_reports_unreadable(
    synthetic_gallery: Path, embedder: Embedder, tmp_path: Path
) -> None:
    (synthetic_gallery / "red_circles" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    shutil.copy(synthetic_gallery / "red_circles" / "red_circles_000.png", synthetic_gallery / "red_circles" / "z.png")
    report = build_gallery_index(embedder, synthetic_gallery, tmp_path / "idx", num_workers=0, progress=False)
    assert report.count == 48 and report.duplicates == 1 and report.factory == "IDMap2,Flat"
    assert list(report.skipped) == ["red_circles/broken.png"] and "broken.png" in report.summary()
    gi = GalleryIndex.open(tmp_path / "idx", model_hash=embedder.checkpoint.hash, dim=16)
    assert gi.count == gi.ntotal == 48 and gi.labels() == {
        k: 12 for k in ("blue_triangles", "green_squares", "red_circles", "yellow_bars")
    }
    # Each stored vector is the embedding of its file, and searching with it finds the item itself first.
    record = gi.items(0, 1, label="green_squares")[0][0]
    image_path = gi.image_path(record.id)
    assert image_path == synthetic_gallery.resolve() / record.path
    expected = embedder.embed_files([image_path], num_workers=0, progress=False).embeddings
    assert np.allclose(gi.vector(record.id), expected[0], atol=1e-5)
    assert gi.search(expected, 1)[0][0].id == record.id
    assert (record.width, record.height) == Image.open(image_path).size


def test_update_embeds_only_new_and_changed_files(synthetic_gallery: Path, embedder: Embedder, tmp_path: Path) -> None:
    build_gallery_index(embedder, synthetic_gallery, tmp_path / "idx", num_workers=0, progress=False)
    before = {r.path: r.id for r in GalleryIndex.open(tmp_path / "idx").all_records()}
    (synthetic_gallery / "red_circles" / "red_circles_000.png").unlink()  # gone
    Image.new("RGB", (40, 40), (9, 9, 9)).save(synthetic_gallery / "red_circles" / "red_circles_001.png")  # changed
    (synthetic_gallery / "purple").mkdir()
    Image.new("RGB", (30, 20), (120, 0, 120)).save(synthetic_gallery / "purple" / "p.png")  # new
    report = update_gallery_index(embedder, synthetic_gallery, tmp_path / "idx", num_workers=0, progress=False)
    assert (report.added, report.removed, report.unchanged) == (2, 2, 46)
    gi = GalleryIndex.open(tmp_path / "idx")
    after = {r.path: r.id for r in gi.all_records()}
    assert "red_circles/red_circles_000.png" not in after
    assert after["red_circles/red_circles_001.png"] not in before.values()  # re-embedded under a new id
    assert all(after[p] == i for p, i in before.items() if p in after and p != "red_circles/red_circles_001.png")
    assert gi.get(after["purple/p.png"]).label == "purple" and gi.count == gi.ntotal == 48
    again = update_gallery_index(embedder, synthetic_gallery, tmp_path / "idx", num_workers=0, progress=False)
    assert (again.added, again.removed, again.version) == (0, 0, report.version)  # nothing to do, no new snapshot


def test_add_files_skips_known_content(synthetic_gallery: Path, embedder: Embedder, tmp_path: Path) -> None:
    build_gallery_index(embedder, synthetic_gallery, tmp_path / "idx", num_workers=0, progress=False)
    outside = tmp_path / "new"
    outside.mkdir()
    Image.new("RGB", (10, 10), (1, 2, 3)).save(outside / "a.png")
    shutil.copy(synthetic_gallery / "yellow_bars" / "yellow_bars_003.png", outside / "copy.png")
    report = add_files(embedder, tmp_path / "idx", [outside], label="misc", num_workers=0, progress=False)
    assert (report.added, report.duplicates) == (1, 1)
    gi = GalleryIndex.open(tmp_path / "idx")
    assert gi.get(report.ids[0]).path == str(outside.resolve() / "a.png")
    assert gi.image_path(report.ids[0]) == outside.resolve() / "a.png"


def test_cli_commands(
    synthetic_gallery: Path, tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    idx = str(tmp_path / "idx")
    assert (
        main(
            [
                "index",
                "build",
                "--checkpoint",
                str(tiny_checkpoint),
                "--gallery",
                str(synthetic_gallery),
                "--out",
                idx,
                "--workers",
                "0",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert "indexed 48 images" in capsys.readouterr().out
    query = synthetic_gallery / "blue_triangles" / "blue_triangles_004.png"
    montage = tmp_path / "m.png"
    assert main(["search", "--index", idx, str(query), "-k", "3", "--montage", str(montage)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].split()[-1] == "blue_triangles/blue_triangles_004.png"  # itself first, distance 0
    assert float(out[1].split()[2]) == pytest.approx(0.0, abs=1e-3)
    assert Image.open(montage).size[0] > 3 * 192
    assert main(["index", "remove", "--index", idx, "0", "1", "999"]) == 0
    assert "removed 2 items" in capsys.readouterr().out and GalleryIndex.open(idx).count == 46
    new = tmp_path / "n.png"
    Image.new("RGB", (12, 12), (5, 5, 5)).save(new)
    assert main(["index", "add", "--index", idx, "--label", "dark", str(new), "--workers", "0"]) == 0
    assert "ids: 48" in capsys.readouterr().out
    assert main(["index", "update", "--index", idx, "--workers", "0"]) == 0  # the removed two come back
    assert "2 added" in capsys.readouterr().out
    assert main(["index", "info", "--index", idx]) == 0
    assert re.search(r"^count +49$", capsys.readouterr().out, re.M)
    assert main(["index", "info", "--index", idx, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["count"] == 49
    assert main(["index", "relabel", "--index", idx, "5", "renamed"]) == 0
    assert "item 5 of" in capsys.readouterr().out and GalleryIndex.open(idx).get(5).label == "renamed"
    assert main(["index", "relabel", "--index", idx, "999", "x"]) == 2
    assert "No item with id 999" in capsys.readouterr().err
    pending = GalleryIndex.open(idx).pending
    assert pending > 0 and main(["index", "compact", "--index", idx]) == 0
    assert f"({pending} changes folded in" in capsys.readouterr().out
    reopened = GalleryIndex.open(idx)
    assert reopened.pending == 0 and reopened.count == 49 and reopened.get(5).label == "renamed"
    assert main(["index", "info", "--index", str(tmp_path / "none")]) == 2
    assert "No index at" in capsys.readouterr().err


def test_cli_search_refuses_other_model(
    synthetic_gallery: Path, tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    idx = str(tmp_path / "idx")
    build_gallery_index(tiny_checkpoint, synthetic_gallery, idx, num_workers=0, progress=False)
    other = load_checkpoint(tiny_checkpoint)
    for p in other.model.parameters():
        p.data.add_(0.01)
    from model.core.checkpoint import save_checkpoint

    save_checkpoint(other, tmp_path / "other.pt")
    query = str(synthetic_gallery / "red_circles" / "red_circles_001.png")
    assert main(["search", "--index", idx, "--checkpoint", str(tmp_path / "other.pt"), query]) == 2
    assert "Rebuild it with `imgsim index build`" in capsys.readouterr().err
