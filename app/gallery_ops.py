"""Gallery changes and stored images. Every change is saved (atomic snapshot) before it is acknowledged."""

from __future__ import annotations

import hashlib
import logging
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from PIL import Image

from app.errors import ServiceError, not_found
from app.media import encode_jpeg, shrink
from app.schemas import GalleryItem
from app.service import Service
from index import IndexConflictError, ItemRecord, NewItem
from model.core.files import write_atomic
from model.core.images import ImageError, load_image

log = logging.getLogger(__name__)


def to_item(record: ItemRecord) -> GalleryItem:
    return GalleryItem(
        id=record.id,
        label=record.label,
        width=record.width,
        height=record.height,
        sha256=record.sha256,
        added_at=datetime.fromtimestamp(record.added_at, UTC) if record.added_at else None,
        image_url=f"/v1/gallery/{record.id}/image",
    )


def add_item(
    service: Service, data: bytes, image: Image.Image, label: str, vector: np.ndarray
) -> tuple[ItemRecord, bool, int]:
    """Store the re-encoded image, add its vector, save; returns (record, created, index version)."""
    gi = service.index
    sha = hashlib.sha256(data).hexdigest()
    stored = shrink(image, service.settings.media_max_side)
    relative = f"media/{sha}.jpg"
    with service.write_lock:
        before = gi.count
        write_atomic(Path(gi.index_dir) / relative, encode_jpeg(stored))
        try:
            [item_id] = gi.add(vector.reshape(1, -1), [NewItem(relative, label, sha, stored.width, stored.height)])
            created = gi.count > before
            version = gi.save() if created else gi.version
        except IndexConflictError as exc:
            raise ServiceError(409, "index_conflict", str(exc)) from exc
        except ValueError as exc:  # e.g. an approximate index that needs more vectors to train
            raise ServiceError(422, "index_rejected", str(exc)) from exc
        record = gi.get(item_id)
    if record is None:  # only if a concurrent delete won the race between add and get
        raise not_found(item_id)
    return record, created, version


def remove_item(service: Service, item_id: int) -> int:
    gi = service.index
    with service.write_lock:
        record = gi.get(item_id)
        if record is None or not gi.remove([item_id]):
            raise not_found(item_id)
        version = gi.save()
    if record.path.startswith("media/"):
        # Only after the snapshot without the item is durable; media of the gallery folder is never touched.
        (Path(gi.index_dir) / record.path).unlink(missing_ok=True)
    return version


def render_image(service: Service, item_id: int, size: int | None) -> bytes:
    """The stored image, decoded and re-encoded as JPEG (optionally as a thumbnail of at most ``size`` px)."""
    path = service.index.image_path(item_id)
    if path is None:
        raise not_found(item_id)
    if not Path(path).is_file():
        raise ServiceError(404, "image_not_found", f"The image file of item {item_id} is missing on the server.")
    try:
        image = load_image(path, draft_size=size, max_pixels=service.settings.max_pixels)
    except ImageError as exc:
        log.warning("stored image of item %d is unreadable: %s", item_id, exc.detail)
        raise ServiceError(404, "image_not_found", f"The image file of item {item_id} is unreadable.") from exc
    return encode_jpeg(image, max_side=size or service.settings.media_max_side, quality=85)
