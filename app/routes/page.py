"""``/``: the small web page for people (static HTML + JS, no CDN)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
router = APIRouter(include_in_schema=False)


@router.get("/")
async def page() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html")


@router.get("/favicon.ico")
async def favicon() -> FileResponse:
    # Browsers ask for /favicon.ico whatever the page links; the page and /docs link this SVG too.
    return FileResponse(STATIC_DIR / "favicon.svg", media_type="image/svg+xml")
