"""Embedding photos on a Ray cluster: Ray Data lists them, an actor pool of the project's own ``Embedder`` reads,
hashes, decodes and embeds them, and the results stream back to the caller a chunk at a time.

Each actor holds one ``Embedder``: ONNX Runtime with one thread on a CPU (one actor per CPU of the cluster),
the CUDA engine with nvJPEG on a GPU (``num_gpus=1``, one actor per GPU). An actor hashes a file (sha256)
before decoding it and skips content the gallery already holds (``known``, shared read-only through the
object store), so a build started again embeds only what is missing. A file that cannot be read or decoded
comes back as an error row, never as an exception that stops the job.

Every node reads the photos and the checkpoint at the same paths (shared storage) and has imgsim installed.
The one gallery writer is the caller (the driver): see ``index/ray_build.py``.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from index.build import image_size
from model.core.device import cpu_count
from model.data.galleries import class_folders, folder_rows
from model.inference.embedder import Embedder

log = logging.getLogger(__name__)

Batch = dict[str, np.ndarray]
# What an actor says of each row: embedded now, already in the gallery, or unreadable (with its reason).
NEW, KNOWN, ERROR = "new", "known", "error"


@dataclass(frozen=True)
class RayOptions:
    address: str | None = None  # None: start a local Ray on this machine
    num_cpus: int | None = None  # the local Ray's CPUs (default: all of this machine's)
    batch_size: int = 32  # files per actor call
    chunk: int = 256  # rows per chunk streamed back to the gallery writer (one durable add each)
    threads_per_actor: int = 1  # CPU actors: decode + model threads inside each (one CPU each)


@dataclass(frozen=True)
class PoolPlan:
    actors: int
    num_cpus: float
    num_gpus: float
    device: str


def connect(options: RayOptions) -> None:
    """Join the cluster at ``options.address``, or start a local Ray; quiet Ray Data's own bars and logs."""
    import ray
    from ray.data import DataContext

    if not ray.is_initialized():
        common: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
        if options.address:
            ray.init(address=options.address, **common)
        else:
            ray.init(num_cpus=options.num_cpus or cpu_count(), **common)
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False  # the driver shows one bar (images/s, ETA) of its own
    ctx.execution_options.preserve_order = True  # the same files in the same order: the same ids as without Ray
    logging.getLogger("ray.data").setLevel(logging.WARNING)


def plan_pool(resources: Mapping[str, float], device: str = "auto") -> PoolPlan:
    """One actor per GPU of the cluster (unless ``device`` is cpu), else one per CPU."""
    gpus = int(resources.get("GPU", 0))
    if gpus >= 1 and device != "cpu":
        return PoolPlan(gpus, 1.0, 1.0, "cuda")
    return PoolPlan(max(1, int(resources.get("CPU", 1))), 1.0, 0.0, "cpu")


def list_gallery(root: Path) -> Any:
    """A materialised Ray dataset of the gallery's files (``path``, ``stored``, ``label``): one listing task
    per class folder, with the rules and the order of ``model.data.galleries.scan_gallery``."""
    import ray

    folders = [str(p) for p in class_folders(root)]
    if not folders:
        raise ValueError(f"No class folders in {root}. A gallery has one folder per class with images inside.")
    listed = ray.data.from_items([{"folder": f} for f in folders], override_num_blocks=len(folders))
    return listed.flat_map(folder_rows, fn_kwargs={"root": str(root)}).materialize()  # type: ignore[arg-type]


def from_files(files: list[tuple[Path, str, str]]) -> Any:
    """A Ray dataset of ``(absolute path, stored path, label)`` the caller already listed (update, add)."""
    import ray

    rows = [{"path": str(a), "stored": s, "label": lab} for a, s, lab in files]
    return ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows) // 32, 1000)))


def known_digests(shas: Iterator[str]) -> np.ndarray:
    """The gallery's sha256s as a sorted array of 32-byte digests: 32 bytes a photo, read without a copy from
    the object store by every actor of a node, searched with ``np.searchsorted``."""
    return np.unique(np.array([bytes.fromhex(s) for s in shas], dtype="S32"))


def embed(
    files: Any, checkpoint: str, known: np.ndarray, options: RayOptions, device: str = "auto", precision: str = "auto"
) -> Iterator[Batch]:
    """Chunks of rows (``stored``, ``label``, ``sha256``, ``width``, ``height``, ``status``, ``reason``,
    ``vector``) in the order of ``files``, as the actors finish them. ``precision``: the gallery's (the
    driver's embedder's), so that every actor's vectors may share it."""
    import ray
    from ray.data import ActorPoolStrategy

    plan = plan_pool(ray.cluster_resources(), device)
    if plan.device != "cpu" and precision == "int8":
        raise ValueError(
            "This gallery holds int8 embeddings, which come from the CPU engine, and this Ray cluster embeds on "
            "GPUs: build a new gallery with --precision fp32 (or fp16) to embed on GPUs."
        )
    log.info("embedding on Ray with %d actors (%s)", plan.actors, plan.device)
    embedded = files.map_batches(
        EmbedActor,
        fn_constructor_kwargs={
            "checkpoint": checkpoint,
            "device": plan.device,
            # GPUs: auto (fp16 autocast), the same numerics as an fp32 gallery (index.base.same_numerics)
            "precision": precision if plan.device == "cpu" else "auto",
            "known": ray.put(known),
            "threads": options.threads_per_actor if plan.device == "cpu" else None,
        },
        compute=ActorPoolStrategy(size=plan.actors),
        num_cpus=plan.num_cpus,
        num_gpus=plan.num_gpus,
        batch_size=options.batch_size,
        batch_format="numpy",
    )
    yield from embedded.iter_batches(batch_size=options.chunk, batch_format="numpy", prefetch_batches=1)


class EmbedActor:
    """One ``Embedder`` per actor; called with batches of listed files, returns one row per file."""

    def __init__(self, checkpoint: str, device: str, precision: str, known: Any, threads: int | None) -> None:
        import ray

        self.embedder = Embedder(checkpoint, device=device, precision=precision)
        self.known: np.ndarray = ray.get(known) if isinstance(known, ray.ObjectRef) else known
        self.threads = threads

    def is_known(self, digest: bytes) -> bool:
        at = int(np.searchsorted(self.known, digest))
        return at < len(self.known) and self.known[at] == digest

    def __call__(self, batch: Batch) -> Batch:
        n = len(batch["path"])
        status = np.full(n, NEW, dtype=object)
        reason = np.full(n, "", dtype=object)
        sha = np.full(n, "", dtype=object)
        for i, path in enumerate(batch["path"]):
            try:
                digest = hashlib.sha256(Path(path).read_bytes()).digest()
            except OSError as exc:
                status[i], reason[i] = ERROR, f"{type(exc).__name__}: {exc}"
                continue
            sha[i] = digest.hex()
            if self.is_known(digest):
                status[i] = KNOWN
        todo = np.flatnonzero(status == NEW)
        vectors = np.zeros((n, self.embedder.dim), dtype=np.float32)
        width, height = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
        result = self.embedder.embed_files(
            [Path(batch["path"][i]) for i in todo], batch_size=len(todo) or 1, num_workers=self.threads, progress=False
        )
        for j, row in zip(result.ok, result.embeddings, strict=True):
            i = todo[j]
            vectors[i] = row
            width[i], height[i] = image_size(Path(batch["path"][i]))  # as displayed, like without Ray
        for j, why in result.failures.items():
            status[todo[j]], reason[todo[j]] = ERROR, why
        return {
            "stored": batch["stored"],
            "label": batch["label"],
            "sha256": sha,
            "width": width,
            "height": height,
            "status": status,
            "reason": reason,
            "vector": vectors,
        }
