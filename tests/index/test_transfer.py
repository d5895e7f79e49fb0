"""``imgsim index export`` / ``import``: FAISS -> Milvus Lite -> FAISS gives the same gallery and the same search
answers; an interrupted import, started again, finishes without adding anything twice."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from app.cli import main
from index import NewItem
from index.backend import Gallery, create_empty_gallery, open_gallery
from index.transfer import export_gallery, import_gallery
from tests.index.conftest import MANUAL, clustered, new_items

DIM = 16


def source_gallery(tmp_path: Path, n: int = 250) -> tuple[str, np.ndarray]:
    """A FAISS gallery with removals, a relabel and one uploaded image (a file in its media folder)."""
    location = str(tmp_path / "faiss-src")
    gi = create_empty_gallery(
        location, model_hash="m" * 64, backbone="seed-cnn", dim=DIM, gallery_root=tmp_path / "photos", policy=MANUAL
    )
    x = clustered(n, DIM)
    ids = gi.add(x, new_items(n))
    gi.remove(ids[10:20])
    gi.relabel(ids[3], "renamed")
    (gi.media_dir / "up.jpg").write_bytes(b"uploaded image bytes")
    gi.add(clustered(1, DIM, seed=5), [NewItem("media/up.jpg", "upload", "u" * 64, 4, 3)])
    gi.close()
    return location, x


def answers(gi: Gallery, queries: np.ndarray) -> list[list[tuple[str, str, float]]]:
    """Search answers by content, label and distance (each backend gives its own ids)."""
    out = []
    for label in (None, "cls1", "renamed"):
        for row in gi.search(queries, 10, label=label):
            out.append([(gi.get(h.id).sha256, h.label, round(h.distance, 5)) for h in row])  # type: ignore[union-attr]
    return out


def snapshot(location: str, queries: np.ndarray) -> tuple[int, dict[str, int], list[list[tuple[str, str, float]]]]:
    gi = open_gallery(location)
    try:
        return gi.count, gi.labels(), answers(gi, queries)
    finally:
        gi.close()


def test_faiss_to_milvus_lite_to_faiss_keeps_the_gallery(tmp_path: Path) -> None:
    src, _ = source_gallery(tmp_path)
    queries = clustered(8, DIM, seed=42)
    before = snapshot(src, queries)
    assert before[0] == 241 and before[1]["renamed"] == 1

    with open_gallery(src) as gi:
        exported = export_gallery(gi, tmp_path / "export-1", chunk_items=64)
    assert (exported.items, exported.chunks, exported.media) == (241, 4, 1)
    lite = f"milvus-lite://{tmp_path / 'lite.db'}"
    report = import_gallery(tmp_path / "export-1", lite)
    assert (report.added, report.already_there, report.chunks) == (241, 0, 4)
    assert snapshot(lite, queries) == before

    with open_gallery(lite) as gi:
        assert (gi.model_hash, gi.dim, gi.backbone, gi.gallery_root) == ("m" * 64, DIM, "seed-cnn", tmp_path / "photos")
        upload = gi.id_for_sha("u" * 64)
        assert upload is not None and gi.image_path(upload).read_bytes() == b"uploaded image bytes"  # type: ignore[union-attr]
        export_gallery(gi, tmp_path / "export-2", chunk_items=100)
    back = str(tmp_path / "faiss-back")
    import_gallery(tmp_path / "export-2", back)
    assert snapshot(back, queries) == before
    with open_gallery(back) as gi:
        vectors = {
            r.sha256: v for r, v in zip(gi.all_records(), gi.vectors([r.id for r in gi.all_records()]), strict=True)
        }
    with open_gallery(src) as gi:
        for record in gi.all_records():  # the very vectors, not only the same rankings
            np.testing.assert_allclose(vectors[record.sha256], gi.vector(record.id), atol=1e-6)


@pytest.mark.parametrize("target", ["faiss", "milvus-lite"])
def test_an_interrupted_import_started_again_skips_what_is_there(tmp_path: Path, target: str) -> None:
    src, _ = source_gallery(tmp_path)
    with open_gallery(src) as gi:
        export_gallery(gi, tmp_path / "export", chunk_items=50)  # 5 chunks
    location = str(tmp_path / "target") if target == "faiss" else str(tmp_path / "target.db")

    def stop_after_two(done: int, total: int) -> None:
        if done == 2:
            raise KeyboardInterrupt  # the operator's Ctrl-C, or a lost node: after chunk 2 was made durable

    with pytest.raises(KeyboardInterrupt):
        import_gallery(tmp_path / "export", location, on_chunk=stop_after_two)
    with open_gallery(location) as gi:
        first = {r.sha256: r.id for r in gi.all_records()}
    assert len(first) == 100
    report = import_gallery(tmp_path / "export", location)
    assert (report.added, report.already_there) == (141, 100)
    with open_gallery(location) as gi:
        assert gi.count == 241
        assert all(gi.id_for_sha(sha) == id_ for sha, id_ in first.items())  # what was there kept its id
    again = import_gallery(tmp_path / "export", location)
    assert (again.added, again.already_there, again.version) == (0, 241, report.version)  # nothing to do


def test_import_refuses_another_models_gallery_and_an_unfinished_export(tmp_path: Path) -> None:
    src, _ = source_gallery(tmp_path, n=20)
    with open_gallery(src) as gi:
        export_gallery(gi, tmp_path / "export")
    other = create_empty_gallery(str(tmp_path / "other.db"), model_hash="o" * 64, backbone="b", dim=DIM)
    other.close()
    with pytest.raises(ValueError, match="not by this checkpoint"):
        import_gallery(tmp_path / "export", str(tmp_path / "other.db"))
    (tmp_path / "export" / "manifest.json").unlink()
    with pytest.raises(FileNotFoundError, match="no finished export"):
        import_gallery(tmp_path / "export", str(tmp_path / "new"))
    with pytest.raises(FileExistsError, match="not empty"), open_gallery(src) as gi:
        export_gallery(gi, tmp_path / "export")


def test_cli_export_import_and_faiss_only_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src, _ = source_gallery(tmp_path, n=30)
    assert main(["index", "export", "--index", src, str(tmp_path / "out"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["items"] == 21
    lite = f"milvus-lite://{tmp_path / 'cli.db'}"
    assert main(["index", "import", "--index", lite, str(tmp_path / "out"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["added"] == 21
    assert main(["index", "info", "--index", lite, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["backend"], info["count"], info["labels"]["renamed"]) == ("milvus-lite", 21, 1)
    assert main(["index", "relabel", "--index", lite, "999", "x"]) == 2
    assert "No item with id 999" in capsys.readouterr().err
    assert main(["index", "compact", "--index", lite]) == 2
    assert "works on a gallery folder" in capsys.readouterr().err
