"""Backbone features on the CPU through ONNX Runtime, for frozen-mode training and evaluation.

Computing features is most of a frozen-mode training run (eager PyTorch: about 20 images/s for
efficientnet-lite0 on 2 cores). The backbone is exported once per process and weights (keyed by their hash),
verified against eager PyTorch, and run the way :meth:`model.inference.embedder.Embedder.embed_files` runs the encoder:
a worker per core plus one, each decoding a chunk and making a single-threaded model call. Anything that
keeps it from working (no onnxruntime, an export error, a mismatch) leaves the caller on the PyTorch path.
"""

from __future__ import annotations

import copy
import logging
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from model.core.checkpoint import content_hash
from model.core.images import ImageError
from model.core.presets import EvalPreset
from model.data.galleries import Item
from model.inference.engines import onnxruntime_available, session_options
from model.inference.export_compat import make_exportable
from model.inference.onnx_export import INPUT_NAME, MIN_COSINE, export_module, min_cosine
from model.inference.workers import default_workers, embed_in_workers

log = logging.getLogger(__name__)

Features = Callable[[torch.Tensor], np.ndarray]
_runners: dict[str, Features | None] = {}
_lock = threading.Lock()


def onnx_features(backbone: nn.Module, image_size: int) -> Features | None:
    """A thread-safe ``images -> features`` callable on ONNX Runtime, or None where that is not possible."""
    if not onnxruntime_available():
        return None
    state = {k: v.detach().cpu() for k, v in backbone.state_dict().items()}
    key = content_hash({"image_size": image_size, "input_norm": getattr(backbone, "input_norm", "imagenet")}, state)
    with _lock:
        if key not in _runners:
            _runners[key] = _export_and_verify(backbone, image_size)
        return _runners[key]


def _export_and_verify(backbone: nn.Module, image_size: int) -> Features | None:
    import onnxruntime as ort

    model = copy.deepcopy(backbone).cpu().float().eval()
    noise = torch.randn(3, 3, image_size, image_size, generator=torch.Generator().manual_seed(1234))
    try:
        make_exportable(model, noise[:1])
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "backbone.onnx"
            export_module(model, noise[:2], path)
            session = ort.InferenceSession(str(path), session_options(threads=1), providers=["CPUExecutionProvider"])
        with torch.inference_mode():
            cos = min_cosine(model(noise).numpy(), session.run(None, {INPUT_NAME: noise.numpy()})[0])
    except Exception as exc:  # the exporter and ORT raise many types; PyTorch stays the answer
        log.info("features on PyTorch: the ONNX export failed (%s)", exc)
        return None
    if cos < MIN_COSINE:
        log.warning("features on PyTorch: the ONNX export differs (cosine %.6f)", cos)
        return None

    def run(batch: torch.Tensor) -> np.ndarray:
        out: np.ndarray = session.run(None, {INPUT_NAME: batch.numpy()})[0]
        return out

    return run


def features_in_workers(
    run: Features, root: Path, items: Sequence[Item], image_size: int, progress: bool, desc: str
) -> torch.Tensor:
    """``(len(items), feature_dim)``, in order; an unreadable image raises :class:`ImageError` as on PyTorch."""
    paths = [root / i.path for i in items]
    chunks = []
    with tqdm(total=len(paths), desc=desc, unit="img", disable=not progress) as bar:
        for part in embed_in_workers(paths, EvalPreset(image_size), run, workers=default_workers()):
            if part.failures:
                i, reason = min(part.failures.items())
                raise ImageError("unreadable_image", f"{paths[i]}: {reason}")
            chunks.append(torch.from_numpy(part.embeddings))
            bar.update(part.size)
    return torch.cat(chunks)
