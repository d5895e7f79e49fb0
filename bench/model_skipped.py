"""``python -m bench.model_skipped serve ...``: ``imgsim serve`` with the encoder's forward pass skipped.

For the service benchmark's "model skipped" mode, which measures what everything but the model costs per
request: HTTP, multipart parsing, JPEG decoding and cropping, batching, search and the answer. Each engine call
returns copies of the first image's real embedding (so searches still find neighbours) without running the
network. A benchmark tool only: never a way to serve.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import numpy as np

from app.cli import main
from model.inference.engines import OnnxEngine, TorchEngine

EngineCall = Callable[[Any, Any], np.ndarray]


def skip_forward(call: EngineCall) -> EngineCall:
    """``call(engine, batch)`` run once on one image; afterwards its row, repeated for every image of a batch."""
    row: np.ndarray | None = None

    def skipped(engine: Any, batch: Any) -> np.ndarray:
        nonlocal row
        if row is None:
            row = np.asarray(call(engine, batch[:1]))[0]
        return np.tile(row, (len(batch), 1))

    return skipped


def install() -> None:
    OnnxEngine.__call__ = skip_forward(OnnxEngine.__call__)  # type: ignore[method-assign, assignment]
    OnnxEngine.run_single_threaded = skip_forward(OnnxEngine.run_single_threaded)  # type: ignore[method-assign, assignment]
    TorchEngine.__call__ = skip_forward(TorchEngine.__call__)  # type: ignore[method-assign, assignment]


if __name__ == "__main__":
    install()
    sys.exit(main())
