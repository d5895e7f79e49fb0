"""One settings object for every command and the service: ``IMGSIM_*`` environment variables and ``.env``.

Precedence, highest first: a command-line flag (passed to ``Settings(...)`` by ``app.cli``), an ``IMGSIM_*``
environment variable, the ``.env`` file of the current folder, the default here. ``imgsim up``, ``serve``,
``search``, ``compare``, ``eval``, ``index ...`` and the compose file all read the same names, so one
``.env`` moves them all.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated

from fastapi import Request
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MiB = 1024 * 1024


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="IMGSIM_", env_file=".env", extra="ignore")

    # Where things are: one default location for every command (what `make run` writes).
    data_dir: Path | None = Field(
        default=None, description="folder-per-class photos (None: ../shared/data/dogs if present, else a download)"
    )
    run_dir: Path = Field(default=Path("runs/default"), description="training run folder; best.pt inside")
    checkpoint: Path | None = Field(
        default=None, description="trained checkpoint (None: the one the gallery records, else RUN_DIR/best.pt)"
    )
    index: Path = Field(
        default=Path("indexes/default"),
        description="gallery: a folder (FAISS), milvus://HOST:PORT/COLLECTION or a Milvus Lite *.db; made if missing",
    )
    media_dir: Path | None = Field(
        default=None,
        description="uploaded images of a Milvus gallery, shared by its replicas (None: beside the .db, else "
        "media/COLLECTION); a FAISS gallery keeps them in its folder",
    )
    download_dir: Path = Field(default=Path("data/stanford-dogs"), description="where Stanford Dogs is downloaded")
    train_args: str = Field(default="--mode frozen", description="extra `imgsim train` options of `imgsim up`")
    # Named when the checkpoint is missing: the one-shot command that trains and indexes (compose: its setup job).
    setup_command: str = Field(default="make run", description="the command that trains a model and indexes")
    device: str = Field(default="auto", description="auto, cpu, cuda or cuda:N")
    engine: str = Field(default="auto", description="embedding engine: auto, onnx or torch")
    # auto: the gallery's own precision when it exists; for a new gallery int8 on the CPU (ONNX Runtime, when
    # the model quantises well: 2.4x less CPU per image, Recall@1 unchanged, BENCHMARKS.md), fp16 on CUDA.
    precision: str = Field(default="auto", description="embedding precision: auto, fp32, int8, fp16 or bf16")
    host: str = "127.0.0.1"
    port: int = 8000
    access_log: bool = True

    # Bad input (RELIABILITY.md): caps enforced before and after reading.
    max_upload_bytes: int = Field(default=10 * MiB, gt=0, description="per image")
    max_body_bytes: int = Field(default=40 * MiB, gt=0, description="per request (several images)")
    max_pixels: int = Field(default=40_000_000, gt=0)
    max_batch_images: int = Field(default=16, ge=1, description="images in one /v1/search/batch request")
    # Decodes in flight reserve their estimated peak memory (ImageHeader.decode_bytes) from this budget; one that
    # does not fit gets 503 overloaded at once. 1 GiB holds the largest allowed image (40 MP: 0.4-0.8 GB to
    # decode, more for 16-bit) beside the usual photos (a 12 MP JPEG decodes at 1/8 scale: about 2 MB).
    decode_budget_bytes: int = Field(default=1024 * MiB, gt=0, description="memory for decoding uploads at once")

    # Dynamic batching and the bounded queue.
    batching: bool = True
    # Default: 64 on CUDA; 8 on CPU, where bench_service measured 1.39x the /v1/search throughput of one
    # image per pass at concurrency 8 and 1.48x at 32, with lower latency (BENCHMARKS.md).
    batch_max_size: int | None = Field(default=None, ge=1, description="images per forward pass")
    batch_max_wait_ms: float = Field(default=3.0, ge=0)
    # Default: one per core with ONNX Runtime, else 1. With several, each instance decodes its own batch and
    # uses one core while another pass runs (every core when alone). bench_service (2 cores), 2 vs 1 instance:
    # /v1/search 103 vs 92 requests/s for one client, 148 vs 144 at concurrency 8, 158 vs 147 at 32; BENCHMARKS.md.
    model_instances: int | None = Field(default=None, ge=1, description="forward passes that may run at once")
    queue_max: int = Field(default=128, ge=1, description="images waiting or being embedded; the excess gets 503")
    retry_after_s: int = Field(default=1, ge=0)

    # Optional API keys (header X-API-Key or Authorization: Bearer, comma-separated lists); write keys also
    # read. None: the API is open.
    api_keys_read: Annotated[list[str], NoDecode] = Field(default_factory=list)
    api_keys_write: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # With keys set, /metrics asks for a read key too, unless this is true (a scraper without a key).
    metrics_public: bool = False

    # The HTTP edge (app/http_guard.py; put the same limits on a reverse proxy: docs/deploy.md).
    max_connections: int = Field(default=256, ge=1, description="open connections; the one beyond gets 503")
    header_max_bytes: int = Field(default=16 * 1024, ge=1024, description="request line and headers (else 431)")
    header_timeout_s: float = Field(default=10.0, gt=0, description="for a request's headers to arrive (else 408)")
    body_timeout_s: float = Field(default=10.0, gt=0, description="for a body, plus 1 s per body_min_rate bytes")
    body_min_rate: int = Field(default=32 * 1024, gt=0, description="bytes/s a body must keep up (else 408)")
    keep_alive_timeout_s: int = Field(default=5, ge=1, description="idle time before a kept-alive connection closes")

    media_max_side: int = Field(default=1024, ge=64, description="stored re-encoded uploads are at most this big")
    # The gallery's log is folded into a new base (in the background) past this many changes or this age.
    compact_max_changes: int = Field(default=20_000, ge=1, description="changes kept in the log before compaction")
    compact_max_age_s: float = Field(default=3600.0, gt=0, description="oldest logged change before compaction")
    drain_seconds: float = Field(default=1.0, ge=0, description="after SIGTERM, readiness is 503 this long before exit")

    # Replicas of the embedded gallery (app/replicas.py, docs/scale.md): `imgsim serve --workers N` runs N processes
    # on one port, one of them the writer; hosts sharing the gallery folder run read-only followers.
    workers: int = Field(default=1, ge=1, description="API processes sharing the port; one writes the gallery")
    read_only: bool = Field(default=False, description="never write the gallery: follow its writer's versions")
    writer_url: str | None = Field(
        default=None, description="where a read-only process forwards writes: http://HOST:PORT or unix:/PATH"
    )
    follow_interval_s: float = Field(default=0.5, gt=0, description="how often a read-only process catches up")

    # Browser origins allowed to call the API from their pages (CORS), comma-separated; none: CORS is off.
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)

    @field_validator("data_dir", "checkpoint", "writer_url", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # IMGSIM_CHECKPOINT= in .env means "not set", not the current folder.
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("api_keys_read", "api_keys_write", "cors_origins", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [k.strip() for k in value.split(",") if k.strip()]
        return value

    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_keys_read or self.api_keys_write)


@lru_cache
def get_settings() -> Settings:
    """The settings of the environment (``IMGSIM_*`` variables, ``.env``), read once."""
    return Settings()


async def app_settings(request: Request) -> Settings:
    """The settings the app was created with: the dependency of every route that reads them.

    Kept on ``app.state`` rather than in ``dependency_overrides``: an override makes FastAPI rebuild the
    dependency's signature on every request (measured: about a third of the event loop's time under load).
    """
    settings: Settings = request.app.state.settings
    return settings
