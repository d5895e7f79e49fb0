"""int8 models for the CPU: ONNX Runtime static quantisation of a checkpoint's fp32 export.

The recipe (measured in BENCHMARKS.md against other choices): QDQ format, per-channel int8 weights, uint8
activations with MinMax ranges from 256 calibration photos, ``quant_pre_process`` first. The embedding head
and the backbone's final pooling stay in fp32: quantised, the pooled features share one uint8 scale for all
1,280 of them, which is where most of the error came from. On efficientnet-lite0 this takes 2.4x less CPU per
image than fp32 with Recall@1 unchanged; the embeddings differ slightly (cosine to fp32 about 0.995 on
average), so a gallery records the precision it was embedded with.

Calibration photos are the checkpoint's own training photos (a seeded sample of those it names), or photos
the caller gives. The int8 file is cached beside the fp32 export (``embed-<hash>-v<N>-int8r<R>.onnx``), with a
record (``.json``) of its sha256 and how it was verified: against the fp32 export on other photos of the
same set, mean cosine at least ``MIN_MEAN_COSINE``. A file whose bytes no longer match its record is made
again, so a damaged cache is never served.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import random
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from model.core.checkpoint import Checkpoint
from model.core.files import atomic_path, write_atomic
from model.core.presets import EvalPreset
from model.inference.decode import decode_batch
from model.inference.onnx_export import INPUT_NAME

log = logging.getLogger(__name__)

INT8_RECIPE = 1  # bump when the recipe changes, so old int8 files stop matching
CALIBRATION_PHOTOS = 256
CHECK_PHOTOS = 64
MIN_PHOTOS = 10
MIN_MEAN_COSINE = 0.99  # int8 vs fp32 on photos; fp32 exports match eager PyTorch to 0.9999
BATCH = 8  # calibration batch: ORT keeps every intermediate tensor of a batch (lite0: 1.4 GB peak at 4, 2.7 at 16)


class QuantizationError(RuntimeError):
    """An int8 model cannot be made here (no calibration photos) or strays too far from fp32."""


def int8_path(fp32_path: Path) -> Path:
    return fp32_path.with_name(f"{fp32_path.stem}-int8r{INT8_RECIPE}.onnx")


def checkpoint_photos(ckpt: Checkpoint) -> list[Path]:
    """The training photos a checkpoint names (``imgsim train`` records the data folder and the splits)."""
    root = ckpt.train_args.get("data")
    rows = ckpt.splits.get("train", [])
    if not root or not rows:
        return []
    return [Path(root) / str(path) for path, _ in rows]


def cached_int8(fp32_path: Path) -> Path | None:
    """The cached int8 model of this export if its bytes still match its record, else None."""
    path = int8_path(fp32_path)
    record = _record(path)
    try:
        return path if record.get("sha256") == _sha256(path) else None
    except OSError:
        return None


def rejected_int8(fp32_path: Path) -> str | None:
    """Why the int8 model of this export was refused when it was made (it strayed from fp32), else None."""
    reason = _record(int8_path(fp32_path)).get("rejected")
    return str(reason) if reason else None


def _record(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.with_suffix(".json").read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def make_int8(fp32_path: Path, reference: Any, image_size: int, photos: Sequence[Path]) -> Path:
    """Quantise the verified fp32 export at ``fp32_path`` (``reference``: an ORT session of it) with a seeded
    sample of ``photos``, verify it on others, and cache it with its record. Safe to call from several
    processes at once: they take turns, and the later ones find the file made."""
    path = int8_path(fp32_path)
    with _locked(path.with_suffix(".lock")):
        if cached_int8(fp32_path) is not None:
            return path
        calibration, check = _choose(photos, image_size)
        log.info("quantising %s to int8 with %d calibration photos", fp32_path.name, len(calibration))
        with tempfile.TemporaryDirectory(prefix="imgsim-int8-") as tmp:
            quantized = Path(tmp) / "int8.onnx"
            quantize_onnx(fp32_path, quantized, calibration, image_size)
            cosine = _cosines(reference, quantized, check, image_size)
            record: dict[str, Any] = {
                "recipe": INT8_RECIPE,
                "calibration_photos": len(calibration),
                "check_photos": len(check),
                "cosine_to_fp32": {"mean": float(cosine.mean()), "min": float(cosine.min())},
            }
            if cosine.mean() < MIN_MEAN_COSINE:
                # Recorded, so that precision auto settles on fp32 at once next time instead of trying again.
                record["rejected"] = (
                    f"The int8 model strays from fp32 (mean cosine {cosine.mean():.4f} < {MIN_MEAN_COSINE} on "
                    f"{len(cosine)} photos)"
                )
                write_atomic(path.with_suffix(".json"), json.dumps(record, indent=2))
                raise QuantizationError(f"{record['rejected']}: use precision fp32 (--precision fp32).")
            with atomic_path(path) as target:
                target.write_bytes(quantized.read_bytes())
        record["sha256"] = _sha256(path)
        write_atomic(path.with_suffix(".json"), json.dumps(record, indent=2))
        log.info("int8 model %s: cosine to fp32 mean %.4f, min %.4f", path.name, cosine.mean(), cosine.min())
    return path


def quantize_onnx(fp32_path: Path, out: Path, photos: Sequence[Path], image_size: int) -> None:
    """The recipe: pre-process, then static QDQ quantisation with the head and the final pooling left out."""
    prepared = out.with_name("prepared.onnx")
    with _quiet_root_logger():  # ORT logs a line per rescaled weight channel to the root logger
        _quantize(fp32_path, prepared, out, photos, image_size)


def _quantize(fp32_path: Path, prepared: Path, out: Path, photos: Sequence[Path], image_size: int) -> None:
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(fp32_path), str(prepared))
    quantize_static(
        str(prepared),
        str(out),
        _Reader(photos, EvalPreset(image_size)),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
        nodes_to_exclude=excluded_nodes(onnx.load(str(prepared)).graph.node),
    )


def excluded_nodes(nodes: Sequence[Any]) -> list[str]:
    """The embedding head's nodes (the exporter names them ``/head/...``) and the backbone's global pooling."""
    return [n.name for n in nodes if "/head/" in n.name or n.op_type in ("GlobalAveragePool", "Flatten")]


def _choose(photos: Sequence[Path], image_size: int) -> tuple[list[Path], list[Path]]:
    """A seeded sample of readable photos: ``CHECK_PHOTOS`` to verify on (at most a fifth), the next
    ``CALIBRATION_PHOTOS`` to calibrate with."""
    order = random.Random(0).sample(list(photos), len(photos))
    readable = [p for p in order[: 2 * (CALIBRATION_PHOTOS + CHECK_PHOTOS)] if p.is_file()]
    if len(readable) < MIN_PHOTOS:
        raise QuantizationError(
            f"An int8 model is made from photos of the model's training gallery, and only {len(readable)} of the "
            f"{len(photos)} it names are readable here (at least {MIN_PHOTOS} are needed). Make it once where "
            "they are (it is cached beside the checkpoint), give calibration photos, or use precision fp32 "
            "(--precision fp32, IMGSIM_PRECISION=fp32)."
        )
    n_check = min(CHECK_PHOTOS, len(readable) // 5)
    return readable[n_check : n_check + CALIBRATION_PHOTOS], readable[:n_check]


class _Reader:
    """ORT's ``CalibrationDataReader``: batches of normalised crops, as every embedding path makes them."""

    def __init__(self, photos: Sequence[Path], preset: EvalPreset) -> None:
        self.batches = (decode_batch(photos[k : k + BATCH], k, preset) for k in range(0, len(photos), BATCH))

    def get_next(self) -> dict[str, np.ndarray] | None:
        for batch in self.batches:
            if batch.ok:
                return {INPUT_NAME: batch.images.numpy()}
        return None


def _cosines(reference: Any, int8_path: Path, photos: Sequence[Path], image_size: int) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(int8_path), providers=["CPUExecutionProvider"])
    batch = decode_batch(photos, 0, EvalPreset(image_size)).images.numpy()
    a, b = reference.run(None, {INPUT_NAME: batch})[0], session.run(None, {INPUT_NAME: batch})[0]
    return np.asarray((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@contextmanager
def _quiet_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        root.setLevel(level)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
