"""Gallery changes and stored images. A change is durable (in the gallery's log) before it is acknowledged.

Concurrent adds and deletes run side by side and share the log's fsync (group commit): there is no
service-wide lock, only one per content hash (striped), so that an add and a delete of the same content,
which share the file ``media/<sha256>.jpg``, never interleave. The order makes crashes harmless: the
image file is written before its add is logged and removed after its delete is logged, so a ``kill -9``
can only leave a file that nothing points to, which the gallery sweeps later (index/media_gc.py).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from PIL import Image

from app.errors import ServiceError, not_found
from app.media import encode_jpeg, shrink
from app.schemas import GalleryItem
from app.service import Service
from index import ItemRecord, NewItem
from index.errors import IndexConflictError, IndexCorruptError, storage_error
from model.core.files import write_atomic
from model.core.images import ImageError, load_image

log = logging.getLogger(__name__)
_CONTENT_LOCKS = tuple(threading.Lock() for _ in range(64))


def _content_lock(sha256: str) -> threading.Lock:
    return _CONTENT_LOCKS[int(sha256[:8], 16) % len(_CONTENT_LOCKS)]


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


def refuse_a_second_label(record: ItemRecord | None, label: str) -> None:
    """An image has one label, changed by relabelling: the same image under another is 409 ``label_conflict``
    with the existing item (silently keeping the old label hid the mistake)."""
    if record is not None and record.label != label:
        raise ServiceError(
            409,
            "label_conflict",
            f"This image is already item {record.id}, labelled {record.label!r}; relabel or delete that item "
            f"instead of adding it again as {label!r}.",
            extra={"existing": to_item(record).model_dump(mode="json")},
        )


def add_item(
    service: Service, data: bytes, image: Image.Image, label: str, vector: np.ndarray
) -> tuple[ItemRecord, bool, int]:
    """Store the re-encoded image, add its vector durably; returns (record, created, index version)."""
    gi = service.index
    sha = hashlib.sha256(data).hexdigest()
    with _content_lock(sha):
        known = gi.id_for_sha(sha)
        record = gi.get(known) if known is not None else None
        if record is not None:  # already there: nothing to write, unless it asks for another label
            refuse_a_second_label(record, label)  # again under the lock: a concurrent add may have won
            return record, False, gi.version
        gi.ensure_writer()  # media files are written only by the gallery's writer (the sweep relies on it)
        stored = shrink(image, service.settings.media_max_side)
        relative = f"media/{sha}.jpg"
        path = gi.media_dir / f"{sha}.jpg"
        try:
            write_atomic(path, encode_jpeg(stored))
        except OSError as exc:
            raise storage_error(exc, "the uploaded image") from exc
        try:
            done = gi.commit_add(vector.reshape(1, -1), [NewItem(relative, label, sha, stored.width, stored.height)])
        except (IndexConflictError, IndexCorruptError):
            _discard(path)
            raise
        except ValueError as exc:  # e.g. an approximate index that needs more vectors to train
            _discard(path)
            raise ServiceError(422, "index_rejected", str(exc)) from exc
        except BaseException:  # a storage error: nothing was added, so nothing points to the file
            _discard(path)
            raise
    [item_id] = done.ids
    record = gi.get(item_id)
    if record is None:  # only if a concurrent delete won the race between add and get
        raise not_found(item_id)
    return record, bool(done.created), done.version


def remove_item(service: Service, item_id: int) -> int:
    gi = service.index
    record = gi.get(item_id)
    if record is None:
        raise not_found(item_id)
    stored = gi.image_path(item_id) if record.path.startswith("media/") else None
    with _content_lock(record.sha256):
        done = gi.commit_remove([item_id])
        if not done.ids:  # removed concurrently
            raise not_found(item_id)
        if stored is not None:
            # Only after the removal is durable; media of the gallery folder is never touched.
            _discard(stored)
    return done.version


def relabel_item(service: Service, item_id: int, label: str) -> tuple[ItemRecord, int]:
    """Give the item a new label, durably; returns (record, index version)."""
    gi = service.index
    done = gi.relabel(item_id, label)
    record = gi.get(item_id) if done.ids else None
    if record is None:
        raise not_found(item_id)
    return record, done.version


def _discard(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:  # a read-only disk: the gallery's media sweep removes it later
        log.warning("cannot remove %s: %s", path, exc)


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
