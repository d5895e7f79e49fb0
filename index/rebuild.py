"""Re-indexing: a gallery built anew beside the old one (``index build --replace``, ``index update --rebuild``),
then swapped in, so the old one serves until the new one is whole.

A gallery holds one model's vectors, so another model means embedding everything again: the photo folder, and
the uploads the service kept under ``media/``, re-embedded from their stored copies with their labels (an
upload has no photo-folder file to come back from). Ids are the new gallery's. The old gallery's writer lock
is held from start to swap, so a service writing to it makes the rebuild stop at once (stop the service first,
restart it after), and nothing can change the old gallery while its uploads are being carried over.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from index.build import BuildReport, build_gallery_index, embed_new, make_embedder
from index.gallery import GalleryIndex
from model.core.checkpoint import Checkpoint
from model.inference.embedder import Embedder

log = logging.getLogger(__name__)


def rebuild_gallery_index(
    checkpoint: Checkpoint | str | Path | Embedder,
    gallery_dir: str | Path,
    index_dir: str | Path,
    *,
    factory: str | None = None,
    batch_size: int = 64,
    num_workers: int = 2,
    device: str = "auto",
    progress: bool = True,
    precision: str = "auto",
) -> BuildReport:
    """Build ``index_dir`` anew from ``gallery_dir`` with ``checkpoint``, carrying over the old gallery's uploads
    (re-embedded in the new gallery's ``precision``: auto is int8 on the CPU where the model quantises well)."""
    index_dir = Path(index_dir)
    embedder = make_embedder(checkpoint, device, precision=precision)
    old = GalleryIndex.open(index_dir, writer=True) if (index_dir / "CURRENT").is_file() else None
    scratch = index_dir.with_name(f".{index_dir.name}.rebuilding")
    try:
        shutil.rmtree(scratch, ignore_errors=True)
        report = build_gallery_index(
            embedder,
            gallery_dir,
            scratch,
            factory=factory,
            batch_size=batch_size,
            num_workers=num_workers,
            device=device,
            progress=progress,
        )
        if old is not None:
            report.count += _carry_uploads(old, scratch, embedder, num_workers, progress)
        _swap(scratch, index_dir, old)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        if old is not None:
            old.close()
        raise
    report.index_dir = index_dir
    return report


def _carry_uploads(old: GalleryIndex, scratch: Path, embedder: Embedder, num_workers: int, progress: bool) -> int:
    uploads = [r for r in old.all_records() if r.path.startswith("media/")]
    if not uploads:
        return 0
    for record in uploads:
        target = scratch / record.path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(Path(old.index_dir) / record.path, target)
    with GalleryIndex.open(scratch) as new:
        files = [(scratch / r.path, r.path, r.label) for r in uploads]
        vectors, items, skipped, _ = embed_new(embedder, new, files, num_workers=num_workers, progress=progress)
        # The upload's hash (not the stored copy's) identifies it, so adding the same photo again stays a duplicate.
        by_path = {r.path: r.sha256 for r in uploads}
        items = [type(item)(item.path, item.label, by_path[item.path], item.width, item.height) for item in items]
        if items:
            new.add(vectors, items)
            new.compact()  # a rebuilt gallery is one base, as a built one is
    for path, reason in skipped.items():
        log.warning("upload %s not carried over: %s", path, reason)
    return len(items)


def _swap(new: Path, target: Path, holder: GalleryIndex | None) -> None:
    """``new`` takes ``target``'s place; the old one (whose writer lock ``holder`` has) goes after the rename."""
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    new.rename(target)
    if holder is not None:
        holder.close()
    shutil.rmtree(old, ignore_errors=True)
