"""The ONNX export of a checkpoint's encoder, derived from it and cached beside it, keyed by its content hash.

The file is ``<checkpoint dir>/.cache/embed-<sha256 of the weights>-v<EXPORT_VERSION>.onnx``. The hash is
recomputed from the weights in memory (not trusted from the file), so a retrained or edited checkpoint maps to
a new name and is re-exported; an old export is never served for new weights. Exports are verified against
eager PyTorch before they are published with an atomic rename, and re-verified when loaded, so a damaged
cache file is replaced rather than used.
"""

from __future__ import annotations

import copy
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from model.core.checkpoint import Checkpoint, content_hash
from model.core.files import atomic_path
from model.core.network import SiameseNetwork
from model.inference.export_compat import make_exportable

log = logging.getLogger(__name__)

EXPORT_VERSION = 1  # bump when the export recipe changes, so old cache files stop matching
OPSET = 17
INPUT_NAME, OUTPUT_NAME = "images", "embeddings"
MIN_COSINE = 0.9999  # export vs eager on the verification batch; fp32 exports reach 0.99999+


class _Embed(nn.Module):
    """``SiameseNetwork.embed`` as a module's forward, which is what the exporter traces."""

    def __init__(self, model: SiameseNetwork) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.embed(x)


def weights_hash(ckpt: Checkpoint) -> str:
    state = {k: v.detach().cpu() for k, v in ckpt.model.state_dict().items()}
    return content_hash(ckpt.config.to_dict(), state)


def default_cache_dir(ckpt: Checkpoint) -> Path:
    if ckpt.path is not None and os.access(ckpt.path.parent, os.W_OK):
        return ckpt.path.parent / ".cache"
    # An in-memory or read-only checkpoint: a per-user cache, as torch hub does.
    return Path(os.environ.get("IMGSIM_CACHE_DIR", Path.home() / ".cache" / "imgsim")) / "onnx"


def onnx_path(ckpt: Checkpoint, cache_dir: Path | None = None, digest: str | None = None) -> Path:
    digest = digest or weights_hash(ckpt)
    return (cache_dir or default_cache_dir(ckpt)) / f"embed-{digest}-v{EXPORT_VERSION}.onnx"


def verification_batch(ckpt: Checkpoint, n: int = 3) -> torch.Tensor:
    """Seeded noise shaped like normalised images: catches a wrong graph, cheap enough for every load."""
    g = torch.Generator().manual_seed(1234)
    size = ckpt.config.image_size
    return torch.randn(n, 3, size, size, generator=g)


def export_onnx(ckpt: Checkpoint, path: Path) -> None:
    """Trace ``embed`` on CPU in eval mode and write it atomically (see :mod:`model.core.files`)."""
    # A copy, so the caller's model keeps its device and mode (the exporter toggles the wrapper's mode).
    wrapper = _Embed(copy.deepcopy(ckpt.model).cpu().float()).eval()
    make_exportable(wrapper, verification_batch(ckpt, 1))
    with atomic_path(path) as tmp:
        export_module(wrapper, verification_batch(ckpt, 2), tmp)


def export_module(module: nn.Module, example: torch.Tensor, path: Path) -> None:
    """Trace ``module`` (images -> one tensor, any batch size) to ONNX at ``path``: the project's one recipe."""
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of the dynamo one, which needs onnxscript;
        # it traces these networks exactly, and its warnings are not ours to act on.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (example,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )


def min_cosine(reference: np.ndarray, got: np.ndarray) -> float:
    """The smallest row-wise cosine between two (n, d) arrays: how far an export strays from eager PyTorch."""
    cos = (reference * got).sum(1) / (np.linalg.norm(reference, axis=1) * np.linalg.norm(got, axis=1))
    return float(cos.min())


def check_matches(ckpt: Checkpoint, run: object, n: int = 3) -> float:
    """Minimum cosine between ``run(batch)`` (a numpy-in, numpy-out callable) and eager PyTorch."""
    batch = verification_batch(ckpt, n)
    model = ckpt.model
    with torch.inference_mode():
        reference = model.embed(batch.to(next(model.parameters()).device)).float().cpu().numpy()
    return min_cosine(reference, run(batch.numpy()))  # type: ignore[operator]
