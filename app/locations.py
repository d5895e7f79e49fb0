"""Where the model, the gallery and the photos are, for every command: the settings, then one default each.

- model: ``--checkpoint``/``IMGSIM_CHECKPOINT``, else the checkpoint the gallery's manifest records (the model
  that embedded it: what ``serve`` and ``search`` must use), else ``RUN_DIR/best.pt`` (what ``make run`` trains).
- gallery: ``--index``/``IMGSIM_INDEX``, default ``indexes/default``.
- photos: ``--data``/``IMGSIM_DATA_DIR``, else ``../shared/data/dogs`` when present, else a finished download.
"""

from __future__ import annotations

import logging
from pathlib import Path

from app.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_DATA = (Path("../shared/data/dogs"),)
DOWNLOAD_MARKER = ".imgsim-gallery"  # in the download folder: the gallery path of a finished download


def recorded_checkpoint(index_dir: Path) -> Path | None:
    """The checkpoint the gallery at ``index_dir`` records, read from its manifest alone (opening the gallery
    would load its vectors); None when there is no gallery or it records none."""
    from index.backend import gallery_exists, open_gallery, parse_location
    from index.snapshot import read_current, read_manifest, snapshot_name, snapshots_dir

    if parse_location(index_dir).kind != "faiss":  # a Milvus gallery records it in its collection
        try:
            if not gallery_exists(index_dir):
                return None
            gallery = open_gallery(index_dir)
        except (OSError, ValueError, RuntimeError) as exc:
            log.debug("no checkpoint recorded in %s: %s", index_dir, exc)
            return None
        recorded_at = gallery.checkpoint
        gallery.close()
        return Path(recorded_at) if recorded_at else None
    try:
        version = read_current(index_dir)
        if version is None:
            return None
        recorded = read_manifest(snapshots_dir(index_dir) / snapshot_name(version)).checkpoint
    except (OSError, ValueError) as exc:  # damaged: opening the gallery says so properly
        log.debug("no checkpoint recorded in %s: %s", index_dir, exc)
        return None
    return Path(recorded) if recorded else None


def model_checkpoint(settings: Settings) -> Path:
    """The model to load: the one named, else the gallery's own (when that file still exists), else RUN_DIR's."""
    if settings.checkpoint is not None:
        return settings.checkpoint
    recorded = recorded_checkpoint(settings.index)
    if recorded is not None and recorded.is_file():
        return recorded
    return trained_checkpoint(settings)


def trained_checkpoint(settings: Settings) -> Path:
    """The model to build a new gallery with: the one named, else RUN_DIR/best.pt (never the old gallery's)."""
    return settings.checkpoint if settings.checkpoint is not None else settings.run_dir / "best.pt"


def photo_folder(settings: Settings, defaults: tuple[Path, ...] = DEFAULT_DATA) -> Path | None:
    """The folder-per-class photos: the one named, else the first default that exists, else a finished
    Stanford Dogs download; None when there is none (``imgsim up`` then downloads)."""
    if settings.data_dir is not None:
        return settings.data_dir
    for candidate in defaults:
        if candidate.is_dir():
            return candidate
    marker = settings.download_dir / DOWNLOAD_MARKER
    if marker.is_file():
        previous = Path(marker.read_text().strip())
        if previous.is_dir():
            return previous
    return None


def missing_model_message(checkpoint: Path, settings: Settings) -> str:
    return (
        f"No trained model at {checkpoint}. Run `{settings.setup_command}` once to train one and index the "
        "photos, or pass --checkpoint (IMGSIM_CHECKPOINT) to use another."
    )
