"""Liveness, readiness and metrics: cheap and never behind the queue; liveness and readiness always open."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.deps import MetricsAccess, RuntimeDep, SettingsDep
from app.errors import ServiceError
from app.problems import error_responses
from app.schemas import Health, Ready

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="Liveness: the process answers")
async def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Ready,
    responses=error_responses(503),
    summary="Readiness: model and gallery loaded, not draining",
)
async def readyz(runtime: RuntimeDep, settings: SettingsDep, response: Response) -> Ready:
    # Which process answered, for an operator (and a test) behind a shared port: the gallery's writer or a replica.
    role = {"X-Gallery-Role": "read-only" if settings.read_only else "writer"}
    response.headers.update(role)
    if runtime.draining:
        raise ServiceError(503, "draining", "The service is shutting down.", {"Retry-After": "1", **role})
    if runtime.service is None:
        code, detail = ("load_failed", runtime.load_error) if runtime.load_error else ("not_ready", "Loading.")
        raise ServiceError(503, code, detail, {"Retry-After": "5", **role})
    return Ready(status="ready")


@router.get(
    "/metrics",
    response_class=Response,
    dependencies=[MetricsAccess],
    summary="Prometheus metrics (a read key when keys are set, unless IMGSIM_METRICS_PUBLIC)",
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}, **error_responses(401)},
)
async def metrics(runtime: RuntimeDep) -> Response:
    return Response(generate_latest(runtime.metrics.registry), media_type=CONTENT_TYPE_LATEST)
