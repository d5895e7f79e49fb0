"""JPEG decoding on the GPU (nvJPEG through ``torchvision.io.decode_jpeg(device="cuda")``).

On a GPU machine the CPU cores, not the GPU, limit end-to-end embedding: decoding moves to the device. The
CPU still reads and sniffs every file with Pillow (header only: format allow-list, pixel cap, EXIF
orientation), so the same inputs are accepted and refused as by :func:`model.core.images.load_image`. Plain
baseline RGB/greyscale JPEGs with no rotation are decoded on the GPU; anything else (PNG, CMYK, rotated,
or a JPEG nvJPEG refuses) takes the CPU path, so results never depend on which path ran.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from model.core.images import ImageError
from model.core.presets import EvalPreset
from model.inference.decode import DecodedBatch, decode_one, plain_jpeg

log = logging.getLogger(__name__)


def decode_batch_cuda(paths: Sequence[Path], start: int, preset: EvalPreset, device: torch.device) -> DecodedBatch:
    """Like :func:`model.inference.decode.decode_batch`, with JPEGs decoded on ``device``."""
    from torchvision.io import ImageReadMode, decode_jpeg

    crops: dict[int, torch.Tensor] = {}
    failures: dict[int, str] = {}
    gpu_idx: list[int] = []
    gpu_data: list[torch.Tensor] = []
    for k, path in enumerate(paths):
        i = start + k
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            failures[i] = f"{type(exc).__name__}: {exc}"
            continue
        if plain_jpeg(data) is not None:
            gpu_idx.append(i)
            gpu_data.append(torch.frombuffer(bytearray(data), dtype=torch.uint8))
        else:
            _decode_on_cpu(path, i, preset, device, crops, failures)
    if gpu_data:
        try:
            with warnings.catch_warnings():
                # torchvision 0.29 deprecates its decoders for TorchCodec's; until that ships nvJPEG batch
                # decoding in our stack, this is the supported way to decode on the GPU.
                warnings.simplefilter("ignore", DeprecationWarning)
                decoded = decode_jpeg(gpu_data, mode=ImageReadMode.RGB, device=device)
            for i, image in zip(gpu_idx, decoded, strict=True):
                crops[i] = preset.crop(image)
        except RuntimeError as exc:  # nvJPEG refuses some valid files (e.g. rare subsamplings)
            log.debug("GPU JPEG decode failed (%s); decoding this batch on the CPU", exc)
            for i in gpu_idx:
                _decode_on_cpu(paths[i - start], i, preset, device, crops, failures)
    ok = sorted(crops)
    if ok:
        images = preset.normalise(torch.stack([crops[i] for i in ok]))
    else:
        images = torch.zeros(0, 3, preset.image_size, preset.image_size, device=device)
    return DecodedBatch(start, images, ok, failures)


def _decode_on_cpu(
    path: Path,
    i: int,
    preset: EvalPreset,
    device: torch.device,
    crops: dict[int, torch.Tensor],
    failures: dict[int, str],
) -> None:
    try:
        crop = decode_one(path, preset)
        crops[i] = crop.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else crop
    except (ImageError, OSError) as exc:
        failures[i] = f"{type(exc).__name__}: {exc}"
