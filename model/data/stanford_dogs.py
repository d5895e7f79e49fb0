"""``imgsim data stanford-dogs DIR``: download, check and lay out Stanford Dogs (120 breeds, 20,580 images).

The archives come from the dataset's home page with a progress bar and HTTP range resume, and are checked
against their published MD5 sums. The official train/test lists become two folder-per-class galleries of
hard links (no second copy of the images): ``DIR/train/<wnid-Breed>/`` and ``DIR/test/<wnid-Breed>/``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
from tqdm import tqdm

log = logging.getLogger(__name__)

BASE_URL = "http://vision.stanford.edu/aditya86/ImageNetDogs/"
ARCHIVES = {  # name -> MD5 published alongside the dataset (and used by the common dataset loaders)
    "images.tar": "1bb1f2a596ae7057f99d7d75860002ef",
    "lists.tar": "edbb9f16854ec66506b5f09b583e0656",
}
CHUNK = 1 << 20


def md5sum(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, dest: Path, md5: str | None, timeout: float = 30.0) -> Path:
    """Fetch ``url`` to ``dest``, resuming a partial ``dest.part``; verify ``md5`` when given."""
    if dest.is_file() and (md5 is None or md5sum(dest) == md5):
        log.info("%s already downloaded", dest)
        return dest
    part = dest.with_name(dest.name + ".part")
    done = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={done}-"} if done else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except (urllib.error.URLError, OSError) as exc:
        raise RuntimeError(
            f"Could not download {url} ({exc}). This needs the internet. Offline, copy images.tar and lists.tar "
            f"into {dest.parent} by hand, or point IMGSIM_DATA_DIR / --data at any folder-per-class gallery."
        ) from exc
    with response:
        if done and response.status != 206:  # the server ignored the range: start again
            done = 0
        total = int(response.headers.get("Content-Length", 0)) + done or None
        with (
            open(part, "ab" if done else "wb") as f,
            tqdm(total=total, initial=done, unit="B", unit_scale=True, desc=dest.name) as bar,
        ):
            while block := response.read(CHUNK):
                f.write(block)
                bar.update(len(block))
    if md5 is not None and (actual := md5sum(part)) != md5:
        part.unlink()
        raise RuntimeError(
            f"{dest.name} is damaged (MD5 {actual}, expected {md5}); it was removed, run again."
        )
    os.replace(part, dest)
    return dest


def _safe_extract(archive: Path, dest: Path) -> None:
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")  # refuses absolute paths, "..", devices and links out of dest


def read_list(mat_file: Path) -> list[str]:
    """Relative image paths (``n02085620-Chihuahua/n02085620_10074.jpg``) from an official ``*_list.mat``."""
    from scipy.io import loadmat

    table = loadmat(mat_file)
    # A MATLAB cell column: each entry is a 1-element array holding the path string.
    return [str(np.asarray(entry).ravel()[0]) for entry in table["file_list"].ravel()]


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        return
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(src, dst)


def layout_splits(images_tar: Path, lists_tar: Path, dest: Path) -> Path:
    """Extract both archives into ``dest`` and lay out ``dest/train`` and ``dest/test``; returns ``dest/train``."""
    if not (dest / "Images").is_dir():
        _safe_extract(images_tar, dest)
    if not (dest / "train_list.mat").is_file():
        _safe_extract(lists_tar, dest)
    for split in ("train", "test"):
        files = read_list(dest / f"{split}_list.mat")
        missing = [f for f in files if not (dest / "Images" / f).is_file()]
        if missing:
            raise RuntimeError(
                f"{len(missing)} files of {split}_list.mat are not in Images/, e.g. {missing[0]}."
            )
        for rel in tqdm(files, desc=f"{split} split", unit="img"):
            _link(dest / "Images" / rel, dest / split / rel)
    return dest / "train"


def download_stanford_dogs(dest: str | Path, base_url: str = BASE_URL) -> Path:
    """Download (or reuse), verify and lay out the dataset under ``dest``; returns the training gallery."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    paths = {name: download(base_url + name, dest / name, md5) for name, md5 in ARCHIVES.items()}
    return layout_splits(paths["images.tar"], paths["lists.tar"], dest)
