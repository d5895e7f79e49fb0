"""The FastAPI app: ``create_app()`` wires routes, errors, limits and metrics; the lifespan loads the model
and the gallery once, in the background, so liveness answers while they load and readiness says when done."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

import faiss
from anyio import to_thread
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles

from app.auth import ApiKeyMiddleware
from app.deps import Runtime
from app.errors import install_error_handlers
from app.limits import BodyLimitMiddleware
from app.problems import install_openapi
from app.prometheus import MetricsMiddleware
from app.replicas import ForwardWritesMiddleware, follow, writer_client
from app.request_id import RequestIdMiddleware
from app.routes import compare, docs, gallery, health, model, page, search
from app.routes.docs import SWAGGER_UI_DIR
from app.routes.page import STATIC_DIR
from app.service import Service, load_embedder, open_index
from app.settings import Settings, get_settings

log = logging.getLogger(__name__)

DESCRIPTION = """Image similarity search for dog photos: compare two photos, find the nearest gallery
images, and manage the gallery. Distances are Euclidean between unit-length embeddings (0..2): **lower
distance = more similar**.

Errors are RFC 9457 problems (`application/problem+json`) with a stable, machine-readable `code`:
`{"type": "about:blank", "title": "Not Found", "status": 404, "code": "item_not_found", "detail": "..."}`.
With API keys configured, send one as `X-API-Key: <key>` or `Authorization: Bearer <key>`. Every answer
carries an `X-Request-ID` (yours, when you send a sane one), which the server's logs show too."""


def _load(settings: Settings, runtime: Runtime) -> Service:
    embedder = load_embedder(settings)
    index = open_index(settings, embedder)
    log.info(
        "loaded model %s (%s, %d-d) on %s in %s and a gallery of %d items (version %d)",
        embedder.checkpoint.hash[:12],
        embedder.checkpoint.config.backbone,
        embedder.dim,
        embedder.device,
        embedder.precision,
        index.count,
        index.version,
    )
    return Service(settings=settings, embedder=embedder, index=index, metrics=runtime.metrics)


async def _load_in_background(app: FastAPI, settings: Settings, runtime: Runtime) -> None:
    try:
        service = await to_thread.run_sync(_load, settings, runtime)
    except Exception as exc:  # readiness reports it; the process stays up so the reason can be read
        log.exception("loading the model or the gallery failed")
        runtime.load_error = f"{type(exc).__name__}: {exc}"
        return
    service.batcher.start()
    runtime.service = service


async def _catch_up(runtime: Runtime) -> bool:
    """A read-only replica's gallery catches up with the writer's (False until the gallery is loaded)."""
    service = runtime.service
    return False if service is None else await to_thread.run_sync(service.index.refresh)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    runtime: Runtime = app.state.runtime
    runtime.draining = False
    # Small galleries are searched on the event loop's thread, one query at a time: FAISS's OpenMP threads
    # would only spin on the cores the model uses (measured: +3 CPU ms per /v1/search). Per thread setting.
    faiss.omp_set_num_threads(1)
    loader = asyncio.create_task(_load_in_background(app, settings, runtime))
    if getattr(app.state, "load_before_serving", False):
        # `serve --workers N`: the workers share one listening socket, and uvicorn accepts on it only after this
        # startup; loading first means a worker that is still loading never takes a request from a ready sibling.
        await loader
    follower = None
    if settings.read_only:  # a replica follows the writer's versions (app/replicas.py)
        follower = asyncio.create_task(follow(lambda: _catch_up(runtime), settings.follow_interval_s))
    try:
        yield
    finally:
        runtime.draining = True
        for task in (loader, follower):
            if task is not None and not task.done():
                task.cancel()
                with suppress(asyncio.CancelledError):
                    await task
        if app.state.forwarder is not None:
            await app.state.forwarder.aclose()
        if runtime.service is not None:
            service, runtime.service = runtime.service, None
            await service.batcher.close()
            # Fold the log into a new base on a clean shutdown, so the next start replays nothing.
            await to_thread.run_sync(lambda: service.index.close(compact=True))


def create_app(settings: Settings | None = None) -> FastAPI:
    # /docs is served from the swagger-ui-bundle wheel (app.routes.docs), not from a CDN; no /redoc.
    app = FastAPI(
        title="imgsim", version="0.1.0", description=DESCRIPTION, lifespan=lifespan, docs_url=None, redoc_url=None
    )
    app.state.settings = settings = settings or get_settings()
    body_cap = settings.max_body_bytes
    app.state.runtime = Runtime()
    install_error_handlers(app)
    install_openapi(app)
    routers = (health.router, model.router, compare.router, search.router, gallery.router, page.router, docs.router)
    for router in routers:
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.mount("/docs/assets", StaticFiles(directory=str(SWAGGER_UI_DIR)), name="docs-assets")
    # Outermost last: the request id is on every answer and log line (and an unhandled error becomes a 500 problem
    # there); metrics see every answer; CORS answers
    # preflights (which carry no key) and labels refusals; keys are checked before the body cap and any body.
    app.state.forwarder = writer_client(settings.writer_url) if settings.read_only and settings.writer_url else None
    if settings.read_only:  # innermost: a write reaches the writer only past the key check and the body cap

        async def caught_up() -> None:
            await _catch_up(app.state.runtime)

        app.add_middleware(ForwardWritesMiddleware, client=app.state.forwarder, caught_up=caught_up)
    app.add_middleware(BodyLimitMiddleware, max_bytes=body_cap)
    app.add_middleware(ApiKeyMiddleware, settings=settings)
    if settings.cors_origins:  # off by default: only the origins named may call the API from a browser
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "X-API-Key", "X-Request-ID", "If-None-Match"],
            expose_headers=["X-Request-ID", "Retry-After", "ETag"],
            max_age=600,
        )
    app.add_middleware(MetricsMiddleware, metrics=app.state.runtime.metrics)
    app.add_middleware(RequestIdMiddleware)
    return app
