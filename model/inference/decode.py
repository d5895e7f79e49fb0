"""Files -> normalised batches for the encoder, decoded by a thread pool ahead of the forward pass.

Each file goes through :func:`model.core.images.load_image` (sniffing, pixel cap, ``draft``, EXIF, RGB), then the
eval preset's two steps: ``crop`` (resize and centre-crop on uint8) per file, then one ``normalise`` per batch.
The numbers equal ``EvalPreset`` bit for bit.

Threads, not processes: Pillow's JPEG decoder and torch's resize release the GIL, so threads decode in
parallel without worker start-up or pickling, and the batches stay in shared memory.
"""

from __future__ import annotations

import logging
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms.v2 import functional as TF

from model.core.images import MAX_PIXELS, ImageError, ImageHeader, load_image, probe
from model.core.presets import EvalPreset

log = logging.getLogger(__name__)


@dataclass
class DecodedBatch:
    start: int  # index of the batch's first path in the whole input
    images: torch.Tensor  # (n_ok, 3, s, s) float32, normalised
    ok: list[int]  # indices into the whole input, one per row of ``images``
    failures: dict[int, str] = field(default_factory=dict)


def plain_jpeg(data: bytes, max_pixels: int = MAX_PIXELS) -> tuple[int, int] | None:
    """The size of a JPEG that libjpeg decodes to exactly what ``load_image`` gives before ``draft`` (RGB or
    greyscale, no EXIF rotation, within the geometry rules), read from the header alone; None for anything else."""
    try:
        header = probe(data, max_pixels)
    except ImageError:  # load_image reports it properly
        return None
    return (header.width, header.height) if is_plain_jpeg(header) else None


def is_plain_jpeg(header: ImageHeader) -> bool:
    return header.format == "JPEG" and header.mode in ("RGB", "L") and header.orientation == 1


def decode_tensor(
    data: bytes, draft_size: int | None = None, max_pixels: int = MAX_PIXELS, header: ImageHeader | None = None
) -> torch.Tensor:
    """Image bytes -> (3, h, w) uint8, equal to ``pil_to_tensor(load_image(data, draft_size=...))``.

    A plain JPEG that ``draft`` would not shrink is decoded by torchvision straight into a tensor (the same
    libjpeg-turbo, identical pixels, about a third less time than Pillow plus the conversion to a tensor);
    everything else goes through ``load_image``, which also raises its errors. ``header``: the result of
    ``probe(data)`` when the caller has it already (it is not read twice).
    """
    if header is None:
        try:
            header = probe(data, max_pixels)
        except ImageError:
            header = None  # load_image raises the same error, below
    if (
        header is not None
        and is_plain_jpeg(header)
        and (draft_size is None or header.decoded_size(draft_size) == (header.width, header.height))
    ):
        try:
            with warnings.catch_warnings():
                # torchvision 0.29 deprecates its decoders in favour of TorchCodec's, which this stack lacks.
                warnings.simplefilter("ignore", DeprecationWarning)
                return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
        except Exception:  # a damaged JPEG (e.g. truncated): load_image says what is wrong with it
            pass
    return TF.pil_to_tensor(load_image(data, draft_size=draft_size, max_pixels=max_pixels))


def decode_one(path: Path, preset: EvalPreset) -> torch.Tensor:
    return preset.crop(decode_tensor(path.read_bytes(), draft_size=preset.resize_size))


def decode_batch(paths: Sequence[Path], start: int, preset: EvalPreset) -> DecodedBatch:
    """Decode ``paths`` (input indices ``start``...); an unreadable file is a failure, never an exception."""
    crops, ok, failures = [], [], {}
    for k, path in enumerate(paths):
        try:
            crops.append(decode_one(path, preset))
            ok.append(start + k)
        except (ImageError, OSError) as exc:
            failures[start + k] = f"{type(exc).__name__}: {exc}"
    images = preset.normalise(torch.stack(crops)) if crops else torch.zeros(0, 3, preset.image_size, preset.image_size)
    return DecodedBatch(start, images, ok, failures)


def iter_batches(
    paths: Sequence[Path],
    preset: EvalPreset,
    batch_size: int,
    workers: int,
    prefetch: int = 2,
    pin: bool = False,
    chunk: int = 8,
    decode: Callable[[Sequence[Path], int, EvalPreset], DecodedBatch] | None = None,
) -> Iterator[DecodedBatch]:
    """Batches in input order, decoded by ``workers`` threads, at most ``prefetch`` batches ahead.

    A batch is split into chunks of ``chunk`` files so several threads share one batch; with ``workers=0``
    everything is decoded in the caller's thread (no overlap). ``decode`` replaces :func:`decode_batch`
    (the GPU decoder passes its own).
    """
    if decode is None:
        decode = decode_batch
    starts = list(range(0, len(paths), batch_size))
    if workers <= 0:
        for s in starts:
            yield _merge([_done(decode(paths[s : s + batch_size], s, preset))], pin)
        return

    def submit(pool: ThreadPoolExecutor, s: int) -> list[Future[DecodedBatch]]:
        end = min(s + batch_size, len(paths))
        return [pool.submit(decode, paths[c : min(c + chunk, end)], c, preset) for c in range(s, end, chunk)]

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
        pending: deque[list[Future[DecodedBatch]]] = deque()
        try:
            for s in starts:
                pending.append(submit(pool, s))
                if len(pending) > prefetch:
                    yield _merge(pending.popleft(), pin)
            while pending:
                yield _merge(pending.popleft(), pin)
        finally:
            for futures in pending:  # the consumer stopped early: drop what was not started
                for f in futures:
                    f.cancel()


def _done(result: DecodedBatch) -> Future[DecodedBatch]:
    future: Future[DecodedBatch] = Future()
    future.set_result(result)
    return future


def _merge(futures: list[Future[DecodedBatch]], pin: bool) -> DecodedBatch:
    parts = [f.result() for f in futures]
    tensors = [p.images for p in parts]
    if pin and tensors[0].device.type == "cpu":
        # Pinned host memory lets the host-to-device copy run asynchronously, overlapping the forward pass.
        images = torch.empty((sum(len(t) for t in tensors), *tensors[0].shape[1:]), pin_memory=True)
        torch.cat(tensors, out=images)
    else:
        images = torch.cat(tensors) if len(tensors) > 1 else tensors[0]
    failures: dict[int, str] = {}
    for p in parts:
        failures.update(p.failures)
    return DecodedBatch(parts[0].start, images, [i for p in parts for i in p.ok], failures)
