"""Inference engines: the ways to run a checkpoint's encoder on a batch of normalised images.

``torch`` is the reference (eager PyTorch; on CUDA with fp16/bf16 autocast and channels_last), always
available. ``onnx`` runs the exported graph with ONNX Runtime: about 10x less CPU per image than eager
PyTorch for efficientnet-lite0 (11 vs 110-130 CPU ms; BatchNorm folded into the convolutions, fused kernels,
no Python per layer) with the same embeddings (cosine > 0.99999). ``auto`` picks ``onnx`` on CPU when
onnxruntime imports and ``torch`` on CUDA. (Measured and not adopted: ORT static int8 quantisation halves
the CPU per image but moves embeddings to cosine 0.98 min / 0.994 mean, and needs calibration photos.)
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from model.core.checkpoint import Checkpoint
from model.core.device import cpu_count
from model.inference.onnx_export import INPUT_NAME, MIN_COSINE, check_matches, export_onnx, onnx_path

log = logging.getLogger(__name__)

ENGINES = ("auto", "torch", "onnx")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")


class Engine(Protocol):
    """Runs the encoder. Calls may come from several threads at once (model instances, embedding workers)."""

    name: str
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
    """ONNX Runtime on the CPU, from the cached export of the checkpoint (exported first when missing)."""

    name = "onnx"

    def __init__(
        self, ckpt: Checkpoint, threads: int | None = None, spin: bool = False, cache_dir: Path | None = None
    ) -> None:
        import onnxruntime as ort

        self.concurrent_calls = cpu_count()
        self.path = onnx_path(ckpt, cache_dir)
        options = session_options(threads, spin)
        session = None
        if self.path.is_file():
            session = self._open_verified(ckpt, options)
        if session is None:
            log.info("exporting the encoder to ONNX: %s", self.path)
            export_onnx(ckpt, self.path)
            session = self._open_verified(ckpt, options)
            if session is None:
                raise RuntimeError(f"The ONNX export {self.path} does not match PyTorch; use --engine torch.")
        self.session: ort.InferenceSession = session
        self._single: ort.InferenceSession | None = None
        self._lock = threading.Lock()

    def _open_verified(self, ckpt: Checkpoint, options: object) -> object | None:
        """The session if the file loads and matches eager PyTorch, else None (the caller re-exports)."""
        import onnxruntime as ort

        try:
            session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
            cos = check_matches(ckpt, lambda x: session.run(None, {INPUT_NAME: x})[0])
        except Exception as exc:  # ORT raises its own types for a damaged file
            log.warning("cached ONNX export %s is unusable (%s); re-exporting", self.path, exc)
            return None
        if cos < MIN_COSINE:
            log.warning("cached ONNX export %s differs from PyTorch (cosine %.6f)", self.path, cos)
            return None
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


def _as_input(batch: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(batch.detach().cpu().numpy(), dtype=np.float32)


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def build_engine(ckpt: Checkpoint, device: torch.device, engine: str = "auto", **options: object) -> Engine:
    """The engine by name; ``auto`` is the fastest correct one for the device."""
    if engine not in ENGINES:
        raise ValueError(f"Unknown engine {engine!r}. Only {', '.join(ENGINES)} are supported.")
    if engine == "onnx" and device.type != "cpu":
        raise ValueError("engine onnx runs on the CPU only; on CUDA use engine torch (fp16 autocast).")
    if engine == "auto":
        engine = "onnx" if device.type == "cpu" and onnxruntime_available() else "torch"
    if engine == "onnx":
        return OnnxEngine(ckpt, **options)  # type: ignore[arg-type]
    return TorchEngine(ckpt, device, **options)  # type: ignore[arg-type]
