"""A picture of a query beside its neighbours, each captioned with its dissimilarity (distance)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageOps

from index.records import Hit
from model.core.images import ImageError, load_image

TILE, CAPTION, PAD = 192, 36, 8


def _tile(path: Path | None) -> Image.Image:
    try:
        if path is None:
            raise FileNotFoundError
        image = load_image(path, draft_size=TILE)
    except (ImageError, OSError):
        image = Image.new("RGB", (TILE, TILE), (200, 200, 200))
        ImageDraw.Draw(image).text((PAD, TILE // 2), "image missing", fill=(0, 0, 0))
        return image
    return ImageOps.pad(image, (TILE, TILE), color=(255, 255, 255))


def save_montage(query: Path, hits: Sequence[Hit], paths: Sequence[Path | None], out: str | Path) -> Path:
    """Query first, then each hit, left to right; writes ``out`` (format from its suffix)."""
    tiles = [(_tile(query), "Query")]
    tiles += [(_tile(p), f"Dissimilarity: {h.distance:.2f}\n{h.label}") for h, p in zip(hits, paths, strict=True)]
    sheet = Image.new("RGB", (len(tiles) * (TILE + PAD) + PAD, TILE + CAPTION + 2 * PAD), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, (tile, caption) in enumerate(tiles):
        x = PAD + i * (TILE + PAD)
        sheet.paste(tile, (x, PAD))
        draw.multiline_text((x, PAD + TILE + 4), caption, fill=(0, 0, 0))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out
