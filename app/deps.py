"""``Annotated`` dependency aliases shared by the routes, and the runtime state they read.

Every dependency here (and in ``app.auth``, ``app.settings``) is ``async def`` although none awaits: FastAPI
runs a plain ``def`` dependency in its thread pool, a thread hop per dependency per request for what is a
few attribute reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Path, Request, UploadFile

from app.auth import require_metrics, require_read, require_write
from app.errors import ServiceError, too_large
from app.prometheus import Metrics
from app.service import Service, Upload
from app.settings import Settings, app_settings


@dataclass
class Runtime:
    """What the lifespan has loaded so far; readiness and every /v1 route read it."""

    metrics: Metrics = field(default_factory=Metrics)
    service: Service | None = None
    draining: bool = False
    load_error: str | None = None

    @property
    def ready(self) -> bool:
        return self.service is not None and not self.draining


async def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


async def get_service(runtime: Annotated[Runtime, Depends(get_runtime)]) -> Service:
    if runtime.service is None:
        detail = (
            "The model and the gallery are still loading."
            if runtime.load_error is None
            else (f"The service failed to load: {runtime.load_error}")
        )
        raise ServiceError(503, "not_ready", detail, {"Retry-After": "5"})
    return runtime.service


SettingsDep = Annotated[Settings, Depends(app_settings)]
RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
ServiceDep = Annotated[Service, Depends(get_service)]
ReadAccess = Depends(require_read)
WriteAccess = Depends(require_write)
MetricsAccess = Depends(require_metrics)
ItemId = Annotated[int, Path(ge=0, le=2**62, description="the item's id")]


class FormRules:
    """Form checks FastAPI does not make: it takes an empty field for a missing one (``k=''`` silently meant the
    default 5) and one of several files sent under a single-file name (two images to /v1/search searched one)."""

    def __init__(self, files: dict[str, int] | None = None, integers: tuple[str, ...] = ()) -> None:
        self.files, self.integers = files or {}, integers

    async def __call__(self, request: Request) -> None:
        form = await request.form()  # already parsed for the route: Starlette keeps it on the request
        for name in self.integers:
            if form.get(name) == "":
                raise ServiceError(422, "invalid_request", f"{name}: Input should be a valid integer, not empty")
        for name, count in self.files.items():
            sent = len(form.getlist(name))
            if sent > count:
                raise ServiceError(422, "wrong_image_count", f"Send exactly {count} image in {name!r}; got {sent}.")


async def read_upload(upload: UploadFile, field: str, limit: int) -> Upload:
    """Read at most ``limit`` bytes (plus one to notice more); the body cap already bounds the whole request."""
    if upload.size is not None and upload.size > limit:
        raise too_large(limit)
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise too_large(limit)
    return Upload(field=field, data=data)
