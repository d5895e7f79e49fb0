"""Stanford Dogs layout from small archives made here; the download is never attempted for real."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model.data.galleries import scan_gallery
from model.data.stanford_dogs import download, layout_splits, md5sum, read_list

BREEDS = ("n02085620-Chihuahua", "n02111889-Samoyed")


def make_archives(tmp: Path) -> tuple[Path, Path, dict[str, list[str]]]:
    from scipy.io import savemat

    src = tmp / "src"
    files = []
    for breed in BREEDS:
        (src / "Images" / breed).mkdir(parents=True)
        for k in range(3):
            rel = f"{breed}/{breed[:9]}_{k}.jpg"
            Image.new("RGB", (20, 20), (k * 50, 0, 0)).save(src / "Images" / rel)
            files.append(rel)
    lists = {
        "train": [f for f in files if not f.endswith("_2.jpg")],
        "test": [f for f in files if f.endswith("_2.jpg")],
    }
    for split, rels in lists.items():
        column = np.empty((len(rels), 1), dtype=object)
        for i, rel in enumerate(rels):
            column[i, 0] = np.array([rel])
        savemat(src / f"{split}_list.mat", {"file_list": column})
    images_tar, lists_tar = tmp / "images.tar", tmp / "lists.tar"
    with tarfile.open(images_tar, "w") as tar:
        tar.add(src / "Images", arcname="Images")
    with tarfile.open(lists_tar, "w") as tar:
        for split in lists:
            tar.add(src / f"{split}_list.mat", arcname=f"{split}_list.mat")
    return images_tar, lists_tar, lists


def test_official_lists_become_folder_per_class_galleries(tmp_path: Path) -> None:
    images_tar, lists_tar, lists = make_archives(tmp_path)
    dest = tmp_path / "dogs"
    train_dir = layout_splits(images_tar, lists_tar, dest)
    assert read_list(dest / "train_list.mat") == lists["train"]
    train, test = scan_gallery(train_dir), scan_gallery(dest / "test")
    assert train.classes == test.classes == ["Chihuahua", "Samoyed"]
    assert len(train.items) == 4 and len(test.items) == 2
    assert {i.path for i in train.items} == set(lists["train"])
    # Hard links, not copies: the images are stored once.
    linked = train_dir / lists["train"][0]
    assert linked.stat().st_ino == (dest / "Images" / lists["train"][0]).stat().st_ino
    layout_splits(images_tar, lists_tar, dest)  # a second run is a no-op


def test_archive_with_path_traversal_is_refused(tmp_path: Path) -> None:
    evil = tmp_path / "evil.tar"
    payload = tmp_path / "payload.txt"
    payload.write_text("x")
    with tarfile.open(evil, "w") as tar:
        tar.add(payload, arcname="../escaped.txt")
    _, lists_tar, _ = make_archives(tmp_path)
    with pytest.raises(tarfile.TarError):
        layout_splits(evil, lists_tar, tmp_path / "dest")
    assert not (tmp_path / "escaped.txt").exists()


def test_offline_download_fails_with_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="needs the internet"):
        download("http://127.0.0.1:9/images.tar", tmp_path / "images.tar", md5=None, timeout=5)


def test_existing_file_with_the_right_checksum_is_not_downloaded_again(tmp_path: Path) -> None:
    existing = tmp_path / "lists.tar"
    existing.write_bytes(b"already here")
    # The URL is unreachable: reaching it would raise, so returning proves no download was tried.
    assert download("http://127.0.0.1:9/lists.tar", existing, md5=md5sum(existing)) == existing
