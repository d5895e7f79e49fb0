"""``/docs``: Swagger UI from the ``swagger-ui-bundle-v2`` wheel's files (mounted at ``/docs/assets``), so the
API docs render with no network; FastAPI's default page loads them from a CDN and is blank offline."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from swagger_ui_bundle import swagger_ui_path

SWAGGER_UI_DIR = Path(str(swagger_ui_path))
router = APIRouter(include_in_schema=False)


@router.get("/docs")
async def swagger_ui() -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url="/openapi.json",
        title="imgsim API",
        swagger_js_url="/docs/assets/swagger-ui-bundle.js",
        swagger_css_url="/docs/assets/swagger-ui.css",
        swagger_favicon_url="/favicon.ico",
        oauth2_redirect_url=None,
    )
