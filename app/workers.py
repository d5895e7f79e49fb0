"""``imgsim serve --workers N``: N API processes answering on one port, one of them the gallery's writer.

This process binds the port once and starts the workers (``spawn``), each serving that same listening socket
(the kernel hands each new connection to one of them) with ``imgsim serve``'s uvicorn setup: the HTTP edge
limits of ``app.http_guard`` apply per process. Worker 0 writes the gallery and also listens on a Unix socket
of its own; once it is ready the others start: read-only replicas (``app.replicas``) that follow its
versions and forward every write to that socket, so a write succeeds whichever process takes it. A worker
that dies is started again (the kernel releases a dead writer's lock, so its successor takes it). SIGTERM
drains and stops them all.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import tempfile
import time
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType

import httpx

from app.settings import Settings

log = logging.getLogger(__name__)


def listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)  # uvicorn's default backlog
    sock.set_inheritable(True)
    return sock


def run_worker(settings: Settings, sock: socket.socket, writer_socket: str | None) -> None:
    """One worker: ``imgsim serve``'s server on the shared socket (and, for the writer, its Unix socket)."""
    from app.main import create_app
    from app.serve_cli import DrainingServer, uvicorn_config

    sockets = [sock]
    if writer_socket is not None:
        Path(writer_socket).unlink(missing_ok=True)
        private = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        private.bind(writer_socket)
        os.chmod(writer_socket, 0o600)  # only this user's processes may write through it
        sockets.append(private)
    app = create_app(settings)
    app.state.load_before_serving = True  # accept on the shared socket only once loaded (app.main.lifespan)
    DrainingServer(uvicorn_config(app, settings), settings.drain_seconds).run(sockets=sockets)


def _wait_for_writer(writer_socket: str, writer: BaseProcess, timeout_s: float = 300.0) -> None:
    """Until the writer answers ready on its Unix socket (its model and gallery loaded)."""
    client = httpx.Client(transport=httpx.HTTPTransport(uds=writer_socket), base_url="http://writer", timeout=5)
    deadline = time.monotonic() + timeout_s
    with client:
        while writer.is_alive() and time.monotonic() < deadline:
            try:
                if client.get("/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
    log.warning("the writer is not ready (alive: %s); starting the read-only workers anyway", writer.is_alive())


def serve_workers(settings: Settings) -> int:
    sock = listen(settings.host, settings.port)
    writer_socket = str(Path(tempfile.mkdtemp(prefix="imgsim-writer-")) / "writer.sock")
    one = settings.model_copy(update={"workers": 1})
    # On a replica host (--read-only) every worker reads, and writes go to that host's writer URL as they would.
    writer_url = settings.writer_url if settings.read_only else f"unix:{writer_socket}"
    follower = one.model_copy(update={"read_only": True, "writer_url": writer_url})
    roles: list[tuple[Settings, str | None]] = [(one, writer_socket)] + [(follower, None)] * (settings.workers - 1)
    context = multiprocessing.get_context("spawn")

    def start(k: int) -> BaseProcess:
        role, private = roles[k]
        process = context.Process(target=run_worker, args=(role, sock, private), name=f"imgsim-worker-{k}")
        process.start()
        log.info("worker %d (%s) started: pid %s", k, "writer" if private else "read-only", process.pid)
        return process

    processes = [start(0)]
    _wait_for_writer(writer_socket, processes[0])  # it creates a missing gallery; the others open it, read-only
    processes += [start(k) for k in range(1, len(roles))]
    stopping = False

    def stop(sig: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        if sig == signal.SIGTERM:  # Ctrl-C already reached every worker of the terminal's process group
            for process in processes:
                if process.pid is not None and process.is_alive():
                    os.kill(process.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"imgsim: {len(roles)} workers on http://{settings.host}:{settings.port} (worker 0 writes)", flush=True)
    while any(p.is_alive() for p in processes) or not stopping:
        for k, process in enumerate(processes):
            if not stopping and not process.is_alive():
                log.warning("worker %d exited with %s: starting it again", k, process.exitcode)
                time.sleep(1.0)
                processes[k] = start(k)
        time.sleep(0.2)
    sock.close()
    Path(writer_socket).unlink(missing_ok=True)
    Path(writer_socket).parent.rmdir()
    return 0
