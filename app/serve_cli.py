"""``imgsim serve``: the REST API and the web page under uvicorn, with a graceful SIGTERM.

On SIGTERM (or Ctrl-C) readiness turns 503 at once; after ``drain_seconds`` (time for a load balancer to
notice) uvicorn stops accepting, lets in-flight requests finish, runs the lifespan shutdown and exits.
"""

from __future__ import annotations

import argparse
import copy
import logging
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn

from app.http_guard import EdgeLimits, guarded_protocol
from app.locations import missing_model_message, model_checkpoint
from app.settings import Settings

log = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, drain_seconds: float) -> None:
        super().__init__(config)
        self.drain_seconds = drain_seconds
        self._draining = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        app = self.config.app
        runtime = getattr(getattr(app, "state", None), "runtime", None)
        if runtime is not None:
            runtime.draining = True
        if self._draining or self.drain_seconds <= 0:  # a second signal: stop waiting
            super().handle_exit(sig, frame)
            return
        self._draining = True
        log.info("signal %d: readiness is 503; stopping in %.1f s", sig, self.drain_seconds)
        timer = threading.Timer(self.drain_seconds, super().handle_exit, args=(sig, frame))
        timer.daemon = True
        timer.start()


def log_config() -> dict[str, Any]:
    """uvicorn's logging with the request id on each access line (``app.request_id``)."""
    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config["filters"] = {"request_id": {"()": "app.request_id.RequestIdFilter"}}
    config["loggers"]["uvicorn.access"]["filters"] = ["request_id"]
    config["formatters"]["access"]["fmt"] += " request_id=%(request_id)s"
    return config


def uvicorn_config(app: Any, settings: Settings, log_level: str = "info") -> uvicorn.Config:
    """How ``imgsim serve`` runs ``app``: httptools with the edge limits of ``app.http_guard``."""
    limits = EdgeLimits(
        max_connections=settings.max_connections,
        header_max_bytes=settings.header_max_bytes,
        header_timeout_s=settings.header_timeout_s,
        body_timeout_s=settings.body_timeout_s,
        body_min_rate=settings.body_min_rate,
    )
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=guarded_protocol(limits),
        timeout_keep_alive=settings.keep_alive_timeout_s,
        log_level=log_level,
        log_config=log_config(),
        access_log=settings.access_log,
        timeout_graceful_shutdown=30,
        proxy_headers=False,
        server_header=False,
    )


def serve(settings: Settings) -> int:
    """Serve the checkpoint the settings resolve to (``app.locations.model_checkpoint``) with their gallery."""
    from app.main import create_app

    checkpoint = model_checkpoint(settings)
    if not checkpoint.is_file():
        raise FileNotFoundError(missing_model_message(checkpoint, settings))
    settings = settings.model_copy(update={"checkpoint": checkpoint})
    if settings.workers > 1:
        from app.workers import serve_workers

        return serve_workers(settings)
    DrainingServer(uvicorn_config(create_app(settings), settings), settings.drain_seconds).run()
    return 0


def _run(args: argparse.Namespace) -> int:
    from app.cli import command_settings

    return serve(command_settings(args))  # the flags given, over IMGSIM_*, .env and the defaults


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "serve",
        help="serve the REST API and web page",
        description="Serve the REST API and the web page. Options override IMGSIM_* environment variables, "
        "which override .env. The model is --checkpoint, else the one the gallery records, else "
        "runs/default/best.pt.",
    )
    p.add_argument("--host", help="bind address (IMGSIM_HOST; default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (IMGSIM_PORT; default 8000)")
    p.add_argument("--checkpoint", type=Path, help="trained checkpoint (IMGSIM_CHECKPOINT; default: the gallery's)")
    p.add_argument(
        "--index",
        type=Path,
        help="gallery index folder, created empty if missing (IMGSIM_INDEX; default indexes/default)",
    )
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (IMGSIM_DEVICE; default auto)")
    p.add_argument("--engine", help="embedding engine: auto, onnx or torch (IMGSIM_ENGINE; default auto)")
    p.add_argument(
        "--workers",
        type=int,
        help="API processes sharing the port, one of them the gallery's writer (IMGSIM_WORKERS; default 1)",
    )
    p.add_argument(
        "--read-only",
        action="store_const",
        const=True,
        help="never write the gallery, follow its writer's versions: a replica on another host (IMGSIM_READ_ONLY)",
    )
    p.add_argument(
        "--writer-url",
        help="with --read-only: forward writes there, e.g. http://writer:8000 (IMGSIM_WRITER_URL; default: 503)",
    )
    # The settings are taken whole (serve resolves the checkpoint itself): only the flags given are applied.
    names = ("host", "port", "checkpoint", "index", "device", "engine", "workers", "read_only", "writer_url")
    p.set_defaults(func=_run, from_settings={k: k for k in names})
