"""Inference engines: the ways to run a checkpoint's encoder on a batch of normalised images.

``torch`` is the reference (eager PyTorch; on CUDA with fp16/bf16 autocast and channels_last), always
available. ``onnx`` runs the exported graph with ONNX Runtime: about 10x less CPU per image than eager
PyTorch for efficientnet-lite0 (11 vs 110-130 CPU ms; BatchNorm folded into the convolutions, fused kernels,
no Python per layer) with the same embeddings (cosine > 0.99999) in fp32, and 2.4x less again in int8
(:mod:`model.inference.quantize`: Recall@1 unchanged, embeddings at cosine about 0.995 to fp32).
``auto`` picks ``onnx`` on CPU when onnxruntime imports and ``torch`` on CUDA.

Precision: ``auto`` is int8 with ``onnx`` for a checkpoint that can be quantised (it names its training
photos, or calibration photos are given, or its int8 file is cached), else fp32; fp16 with ``torch`` on CUDA.
Embeddings of int8 and of the float precisions differ slightly, so galleries record which they hold
(``index.gallery.same_numerics``); fp16/bf16 on CUDA match fp32 to cosine > 0.999 and count as float.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from model.core.checkpoint import Checkpoint
from model.core.device import cpu_count
from model.inference.onnx_export import INPUT_NAME, MIN_COSINE, check_matches, export_onnx, onnx_path
from model.inference.quantize import QuantizationError, cached_int8, checkpoint_photos, make_int8, rejected_int8

log = logging.getLogger(__name__)

ENGINES = ("auto", "torch", "onnx")
PRECISIONS = ("auto", "fp32", "fp16", "bf16", "int8")



class Engine(Protocol):
    """Runs the encoder. Calls may come from several threads at once (model instances, embedding workers)."""

    name: str
    precision: str  # what it computes in: fp32, fp16, bf16 or int8
    # How many single-threaded calls are worth running at once: one per core where each call keeps to one core
    # (ONNX Runtime), 1 where the engine's threads are shared by the whole process (PyTorch).
    concurrent_calls: int

    def __call__(self, batch: torch.Tensor) -> np.ndarray:
        """Normalised images (n, 3, h, w) -> unit-length embeddings (n, d) float32, using every core."""
        ...

    def run_single_threaded(self, batch: torch.Tensor) -> np.ndarray:
        """The same embeddings computed on one core, for callers that run one call per core at once."""
        ...


class TorchEngine:
    """Eager PyTorch. On CUDA: autocast to ``precision`` (fp16 by default) and channels_last memory layout.

    On CPU it stays plain fp32 and contiguous: the reference every fast path is checked against.
    ``compile=True`` wraps the encoder in ``torch.compile`` (worth it on CUDA for long runs; first batches
    of each new shape are slow while it compiles).
    """

    name = "torch"
    concurrent_calls = 1  # torch's intra-op threads are process-wide: calls at once would share them

    def __init__(
        self,
        ckpt: Checkpoint,
        device: torch.device,
        precision: str = "auto",
        channels_last: bool | None = None,
        compile: bool = False,
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"Unknown precision {precision!r}. Only {', '.join(PRECISIONS)} are supported.")
        if precision == "int8":
            raise ValueError("precision int8 runs on ONNX Runtime on the CPU: use engine onnx (or auto on the CPU).")
        cuda = device.type == "cuda"
        self.device = device
        self.precision = ("fp16" if cuda else "fp32") if precision == "auto" else precision
        if self.precision != "fp32" and not cuda:
            raise ValueError(f"precision {self.precision} needs CUDA; on CPU use fp32 (or engine onnx).")
        self.channels_last = cuda if channels_last is None else channels_last
        self.model = ckpt.model.to(device).eval()
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self._embed = torch.compile(self.model.embed) if compile else self.model.embed
        self._dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.precision)

    @torch.inference_mode()
    def __call__(self, batch: torch.Tensor) -> np.ndarray:
        batch = batch.to(self.device, non_blocking=True)
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=self._dtype, enabled=self._dtype is not None):
            out = self._embed(batch)
        return out.float().cpu().numpy()

    def run_single_threaded(self, batch: torch.Tensor) -> np.ndarray:
        return self(batch)  # no per-call thread count in PyTorch: concurrent_calls = 1 says so


def session_options(threads: int | None = None, spin: bool = False) -> object:
    """ORT on a shared CPU: every core for intra-op work, full graph optimisation, and no spin-waiting.

    Spinning threads burn the cores that decode the next batch between runs: measured end-to-end with
    spinning, 16.3 CPU ms per image and 23% fewer images/s than without (13.0 ms), see BENCHMARKS.md.
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or cpu_count()
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    so.log_severity_level = 3  # errors only
    return so


class OnnxEngine:
    """ONNX Runtime on the CPU, from the cached export of the checkpoint (exported first when missing), in fp32
    or int8 (quantised first when missing, with ``calibration_images`` or the checkpoint's training photos)."""

    name = "onnx"

    def __init__(
        self,
        ckpt: Checkpoint,
        threads: int | None = None,
        spin: bool = False,
        cache_dir: Path | None = None,
        precision: str = "auto",
        calibration_images: Sequence[Path] | None = None,
    ) -> None:
        import onnxruntime as ort

        if precision not in ("auto", "fp32", "int8"):
            raise ValueError(f"engine onnx runs in fp32 or int8, not {precision!r} (that needs CUDA, engine torch).")
        self.concurrent_calls = cpu_count()
        fp32_path = onnx_path(ckpt, cache_dir)
        photos = list(calibration_images) if calibration_images else checkpoint_photos(ckpt)
        auto = precision == "auto"
        if auto:
            quantisable = (photos or cached_int8(fp32_path)) and not rejected_int8(fp32_path)
            precision = "int8" if quantisable else "fp32"
        options = session_options(threads, spin)
        self.path = fp32_path
        if precision == "int8":
            try:
                self.path = cached_int8(fp32_path) or make_int8(
                    fp32_path, self._fp32_session(ckpt, fp32_path, session_options(1)), ckpt.config.image_size, photos
                )
            except QuantizationError as exc:
                if not auto:
                    raise
                log.warning("no int8 model (%s); precision auto embeds in fp32", exc)
                precision = "fp32"
        self.precision = precision
        if precision == "int8":
            self.session: ort.InferenceSession = ort.InferenceSession(
                str(self.path), options, providers=["CPUExecutionProvider"]
            )
        else:
            self.session = self._fp32_session(ckpt, fp32_path, options)
        self._single: ort.InferenceSession | None = None
        self._lock = threading.Lock()

    @staticmethod
    def _fp32_session(ckpt: Checkpoint, path: Path, options: object) -> Any:
        """A session of the fp32 export, verified against eager PyTorch; exported (again) when missing or wrong."""
        session = _open_verified(ckpt, path, options) if path.is_file() else None
        if session is None:
            log.info("exporting the encoder to ONNX: %s", path)
            export_onnx(ckpt, path)
            session = _open_verified(ckpt, path, options)
            if session is None:
                raise RuntimeError(f"The ONNX export {path} does not match PyTorch; use --engine torch.")
        return session

    def __call__(self, batch: torch.Tensor) -> np.ndarray:
        return self.session.run(None, {INPUT_NAME: _as_input(batch)})[0]

    def run_single_threaded(self, batch: torch.Tensor) -> np.ndarray:
        """``self(batch)`` on a second session with one intra-op thread, for callers that run one call per core
        at once (see :mod:`model.inference.workers`). ORT sessions are thread-safe; this one opens on first use."""
        with self._lock:
            if self._single is None:
                import onnxruntime as ort

                options = session_options(threads=1)
                self._single = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        return self._single.run(None, {INPUT_NAME: _as_input(batch)})[0]


def _open_verified(ckpt: Checkpoint, path: Path, options: object) -> Any:
    """The session if the file loads and matches eager PyTorch, else None (the caller re-exports)."""
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        cos = check_matches(ckpt, lambda x: session.run(None, {INPUT_NAME: x})[0])
    except Exception as exc:  # ORT raises its own types for a damaged file
        log.warning("cached ONNX export %s is unusable (%s); re-exporting", path, exc)
        return None
    if cos < MIN_COSINE:
        log.warning("cached ONNX export %s differs from PyTorch (cosine %.6f)", path, cos)
        return None
    return session


def _as_input(batch: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(batch.detach().cpu().numpy(), dtype=np.float32)


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def precision_for_gallery(recorded: str | None, device: torch.device) -> str:
    """What precision ``auto`` means beside a gallery embedded in ``recorded`` (None: no gallery yet, so auto):
    int8 stays int8; a float gallery gets its own precision where this device runs it, else fp32."""
    if recorded is None:
        return "auto"
    return recorded if recorded == "int8" or device.type == "cuda" else "fp32"


def build_engine(
    ckpt: Checkpoint,
    device: torch.device,
    engine: str = "auto",
    precision: str = "auto",
    calibration_images: Sequence[Path] | None = None,
    **options: object,
) -> Engine:
    """The engine by name; ``auto`` is the fastest correct one for the device (and the precision)."""
    if engine not in ENGINES:
        raise ValueError(f"Unknown engine {engine!r}. Only {', '.join(ENGINES)} are supported.")
    if precision not in PRECISIONS:
        raise ValueError(f"Unknown precision {precision!r}. Only {', '.join(PRECISIONS)} are supported.")
    if engine == "onnx" and device.type != "cpu":
        raise ValueError("engine onnx runs on the CPU only; on CUDA use engine torch (fp16 autocast).")
    if engine == "auto":
        onnx = device.type == "cpu" and onnxruntime_available() and precision in ("auto", "fp32", "int8")
        engine = "onnx" if onnx else "torch"
    if engine == "onnx":
        return OnnxEngine(ckpt, precision=precision, calibration_images=calibration_images, **options)  # type: ignore[arg-type]
    return TorchEngine(ckpt, device, precision=precision, **options)  # type: ignore[arg-type]
