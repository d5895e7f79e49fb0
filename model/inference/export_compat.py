"""Rewrites that make a network exportable to ONNX without changing what it computes.

The ONNX exporter only handles adaptive average pooling when the output size divides the input size
(then it is a plain AveragePool). ``seed-cnn`` pools its 3x3 map (at 64 px) to 4x4, so each such pool is
replaced by the equivalent fixed averaging matrices, valid at the export's fixed image size.
"""

from __future__ import annotations

import torch
from torch import nn


def _bins(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in) matrix averaging the bins of adaptive pooling: [floor(i*in/out), ceil((i+1)*in/out))."""
    m = torch.zeros(n_out, n_in)
    for i in range(n_out):
        lo, hi = (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)
        m[i, lo:hi] = 1.0 / (hi - lo)
    return m


class MatrixAdaptiveAvgPool2d(nn.Module):
    """``AdaptiveAvgPool2d`` for one input size, as two matrix products (exportable for any sizes)."""

    rows: torch.Tensor
    cols: torch.Tensor

    def __init__(self, in_hw: tuple[int, int], out_hw: tuple[int, int]) -> None:
        super().__init__()
        self.register_buffer("rows", _bins(in_hw[0], out_hw[0]))
        self.register_buffer("cols", _bins(in_hw[1], out_hw[1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rows @ x @ self.cols.T


def _pair(size: int | tuple[int | None, ...] | None, default: tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    if size is None:
        return default
    h, w = size
    return (h or default[0]), (w or default[1])


def make_exportable(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """Replace, in place, each adaptive average pool whose output size does not divide its input size."""
    seen: dict[str, tuple[int, int]] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, nn.AdaptiveAvgPool2d):

            def record(mod: nn.Module, args: tuple[torch.Tensor, ...], name: str = name) -> None:
                seen[name] = (int(args[0].shape[-2]), int(args[0].shape[-1]))

            hooks.append(module.register_forward_pre_hook(record))
    try:
        with torch.inference_mode():
            model(example)
    finally:
        for h in hooks:
            h.remove()
    for name, in_hw in seen.items():
        parent_name, _, attr = name.rpartition(".")
        pool = model.get_submodule(name)
        out_hw = _pair(pool.output_size, in_hw)  # type: ignore[arg-type]
        if in_hw[0] % out_hw[0] or in_hw[1] % out_hw[1]:
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, attr, MatrixAdaptiveAvgPool2d(in_hw, out_hw))
    return model
