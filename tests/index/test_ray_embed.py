"""``--ray``: a local Ray (2 CPUs) embeds like the built-in path (same vectors, same gallery), resumes a build
killed part-way without embedding again what was committed, and serves ``index update|add --ray``."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray
from PIL import Image

from app.cli import main
from index import GalleryIndex, build_gallery_index, update_gallery_index
from index.ray_build import MARKER
from index.ray_embed import RayOptions, connect, plan_pool

ROOT = Path(__file__).resolve().parents[2]
CHILD = Path(__file__).with_name("ray_build_child.py")
OPTIONS = RayOptions(num_cpus=2, batch_size=8, chunk=8)


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    connect(OPTIONS)
    yield
    ray.shutdown()


def records(index_dir: Path) -> list[tuple[int, str, str, str, int, int]]:
    gi = GalleryIndex.open(index_dir)
    return [(r.id, r.path, r.label, r.sha256, r.width, r.height) for r in gi.all_records()]


def assert_same_gallery(ours: Path, reference: Path) -> None:
    """The same items under the same ids, and each photo's vector with cosine >= 0.9999 to the reference's."""
    assert records(ours) == records(reference)
    a, b = GalleryIndex.open(ours), GalleryIndex.open(reference)
    cosines = [float(a.vector(r.id) @ b.vector(r.id)) for r in b.all_records()]  # type: ignore[operator]
    assert len(cosines) == b.count > 0 and min(cosines) >= 0.9999


def test_killed_build_resumes_without_embedding_again(
    synthetic_gallery: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    (synthetic_gallery / "red_circles" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    index_dir = tmp_path / "idx"
    child = subprocess.Popen(
        [sys.executable, str(CHILD), str(tiny_checkpoint), str(synthetic_gallery), str(index_dir), "2"],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        start_new_session=True,  # its local Ray too: the whole group is killed, as a lost machine would be
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline().decode()
        assert line.startswith("COMMITTED"), line
    finally:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
    assert (index_dir / MARKER).is_file()
    done = GalleryIndex.open(index_dir).count  # what the killed build made durable
    assert 0 < done < 48

    connect(OPTIONS)
    report = build_gallery_index(tiny_checkpoint, synthetic_gallery, index_dir, progress=False, ray=OPTIONS)
    assert (report.resumed, report.embedded, report.count) == (done, 48 - done, 48)  # type: ignore[attr-defined]
    assert list(report.skipped) == ["red_circles/broken.png"] and report.duplicates == 0
    assert not (index_dir / MARKER).exists()
    reference = build_gallery_index(tiny_checkpoint, synthetic_gallery, tmp_path / "ref", progress=False)
    assert_same_gallery(index_dir, reference.index_dir)


def test_ray_build_gives_the_built_in_gallery(
    local_ray: None, synthetic_gallery: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    (synthetic_gallery / "red_circles" / "broken.png").write_bytes(b"not an image")
    copy = synthetic_gallery / "red_circles" / "z.png"
    shutil.copy(synthetic_gallery / "blue_triangles" / "blue_triangles_003.png", copy)
    ours = build_gallery_index(tiny_checkpoint, synthetic_gallery, tmp_path / "ray", progress=False, ray=OPTIONS)
    reference = build_gallery_index(tiny_checkpoint, synthetic_gallery, tmp_path / "ref", progress=False)
    assert (ours.count, ours.duplicates, ours.skipped) == (reference.count, reference.duplicates, reference.skipped)
    assert ours.count == 48 and ours.duplicates == 1 and list(ours.skipped) == ["red_circles/broken.png"]
    assert ours.embedded == 49 and ours.resumed == 0  # type: ignore[attr-defined]
    assert_same_gallery(tmp_path / "ray", tmp_path / "ref")
    with pytest.raises(ValueError, match="already holds an index"):  # only an interrupted build resumes
        build_gallery_index(tiny_checkpoint, synthetic_gallery, tmp_path / "ray", progress=False, ray=OPTIONS)


def test_update_and_add_on_ray_match_the_built_in_path(
    local_ray: None, synthetic_gallery: Path, tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    build_gallery_index(tiny_checkpoint, synthetic_gallery, tmp_path / "ray", num_workers=0, progress=False)
    shutil.copytree(tmp_path / "ray", tmp_path / "ref")
    (synthetic_gallery / "red_circles" / "red_circles_000.png").unlink()
    Image.new("RGB", (40, 30), (9, 9, 9)).save(synthetic_gallery / "red_circles" / "red_circles_001.png")
    (synthetic_gallery / "purple").mkdir()
    Image.new("RGB", (30, 20), (120, 0, 120)).save(synthetic_gallery / "purple" / "p.png")
    (synthetic_gallery / "purple" / "q.png").write_bytes(b"broken")

    assert main(["index", "update", "--index", str(tmp_path / "ray"), "--ray", "--json"]) == 0
    ours = json.loads(capsys.readouterr().out)
    reference = update_gallery_index(tiny_checkpoint, synthetic_gallery, tmp_path / "ref", progress=False)
    assert (ours["added"], ours["removed"], ours["unchanged"]) == (2, 2, 46)
    assert (reference.added, reference.removed, ours["skipped"]) == (2, 2, reference.skipped)
    assert_same_gallery(tmp_path / "ray", tmp_path / "ref")

    extra = tmp_path / "extra"
    extra.mkdir()
    Image.new("RGB", (50, 50), (200, 100, 0)).save(extra / "orange.png")
    shutil.copy(synthetic_gallery / "purple" / "p.png", extra / "same_as_p.png")  # already in the gallery
    command = ["index", "add", "--index", str(tmp_path / "ray"), "--label", "orange", str(extra), "--ray", "--json"]
    assert main(command) == 0
    added = json.loads(capsys.readouterr().out)
    assert (added["added"], added["duplicates"]) == (1, 1)
    gi = GalleryIndex.open(tmp_path / "ray")
    record = gi.get(added["ids"][0])
    assert record is not None and record.label == "orange" and record.path == str(extra / "orange.png")


def test_pool_is_sized_from_the_cluster() -> None:
    assert plan_pool({"CPU": 2.0}) == plan_pool({"CPU": 2.0, "GPU": 0.0})
    cpu = plan_pool({"CPU": 16.0})
    assert (cpu.actors, cpu.num_gpus, cpu.device) == (16, 0.0, "cpu")
    gpu = plan_pool({"CPU": 64.0, "GPU": 4.0})
    assert (gpu.actors, gpu.num_gpus, gpu.device) == (4, 1.0, "cuda")
    assert plan_pool({"CPU": 64.0, "GPU": 4.0}, device="cpu").actors == 64


def test_ray_options_on_the_command_line(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from app.cli import build_parser
    from app.up_cli import options_from_args

    args = build_parser().parse_args(["up", "--ray", "--no-serve", "--index", str(tmp_path / "i")])
    assert options_from_args(args).ray == ""  # a local Ray
    args = build_parser().parse_args(["up", "--ray", "ray://head:10001", "--no-serve"])
    assert options_from_args(args).ray == "ray://head:10001"
    assert options_from_args(build_parser().parse_args(["up", "--no-serve"])).ray is None
    command = ["index", "build", "--data", str(tmp_path), "--index", str(tmp_path / "i"), "--replace", "--ray"]
    command += ["--checkpoint", str(tiny_checkpoint)]
    assert main(command) == 2 and "--ray does not combine with --replace" in capsys.readouterr().err


def test_a_build_folds_its_log_geometrically() -> None:
    from index.ray_build import FOLD_MAX, FOLD_MIN, fold_due

    in_base = pending = folds = 0
    for _ in range(100_000_000 // 250_000):  # a 100M-photo build, checked every 250,000 photos
        pending += 250_000
        if fold_due(pending, in_base):
            in_base, pending, folds = in_base + pending, 0, folds + 1
    assert FOLD_MIN <= FOLD_MAX and 20 <= folds <= 30  # about 100M / FOLD_MAX, not one per 20,000 changes
    assert not fold_due(FOLD_MIN - 1, 0) and fold_due(FOLD_MIN, 0) and fold_due(FOLD_MAX, 10 * FOLD_MAX)
