"""The one-command first run behind ``imgsim up`` and ``make run``: data -> model -> index -> serve.

Each step is skipped when its output is already there and still matches its inputs, so a second run starts
serving in seconds:

- data: ``--data``/``IMGSIM_DATA_DIR``, else the first default folder that exists (``../shared/data/dogs``
  here), else a finished Stanford Dogs download, else a download; offline with no data it stops with a
  message that says what to do. It never falls back to made-up images.
- model: ``RUN_DIR/best.pt`` is reused when the data fingerprint it was trained on matches the gallery's
  now; otherwise it is trained into a scratch folder that replaces ``RUN_DIR`` only once training finished,
  so an interrupted run never leaves a half-trained model that a later run would reuse.
- index: skipped when the index opens with the checkpoint's hash and the last run recorded the same
  checkpoint and gallery; updated (only new or changed files embedded) when the gallery moved; rebuilt when
  it belongs to another model or is missing.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from app.locations import DEFAULT_DATA, DOWNLOAD_MARKER

if TYPE_CHECKING:
    from app.settings import Settings

log = logging.getLogger(__name__)

STATE_FILE = "up_state.json"  # in RUN_DIR: what the last successful run indexed with this checkpoint


class FirstRunError(RuntimeError):
    """A step cannot go on without the user; the message says exactly what to do."""


@dataclass
class UpOptions:
    data: Path | None = None
    run_dir: Path = Path("runs/default")
    index_dir: Path = Path("indexes/default")
    download_dir: Path = Path("data/stanford-dogs")
    default_data: Sequence[Path] | None = None  # None: DEFAULT_DATA
    device: str = "auto"
    train_args: list[str] = field(default_factory=lambda: ["--mode", "frozen"])
    retrain: bool = False
    host: str = "127.0.0.1"
    port: int = 8000
    ray: str | None = None  # embed on Ray: a cluster address, or "" for a local Ray (index/ray_build.py)


@dataclass
class Prepared:
    data: Path
    checkpoint: Path
    index_dir: Path
    actions: dict[str, str]  # step -> what happened: "found", "downloaded", "reused", "trained", "built", ...


Downloader = Callable[[Path], Path]


def _download_stanford_dogs(dest: Path) -> Path:
    from model.data.stanford_dogs import download_stanford_dogs

    return download_stanford_dogs(dest)


def offline_message(reason: str, download_dir: Path) -> str:
    return (
        "No image gallery was found, and Stanford Dogs could not be downloaded "
        f"({reason}).\nDo one of these, then run `make run` (or `imgsim up`) again:\n"
        "  1. Point IMGSIM_DATA_DIR at your own photos, one folder per class with .jpg/.png/.webp files:\n"
        "       IMGSIM_DATA_DIR=/path/to/photos make run\n"
        "  2. On a machine with internet access, download the dataset and copy the folder here:\n"
        f"       imgsim data stanford-dogs {download_dir}\n"
        f'     then:  IMGSIM_DATA_DIR={download_dir}/train make run   (the folder it prints: "train on ...")'
    )


def resolve_data(opts: UpOptions, downloader: Downloader | None = None) -> tuple[Path, str]:
    """The gallery folder to use and how it was found ("given", "found", "downloaded")."""
    if opts.data is not None:
        if not opts.data.is_dir():
            # An explicit choice that is wrong must stop the run, not be replaced by another folder.
            raise FirstRunError(
                f"The data folder {opts.data} (from --data or IMGSIM_DATA_DIR) does not exist. "
                "Point it at a folder with one subfolder per class of .jpg/.png/.webp images."
            )
        return opts.data, "given"
    for candidate in DEFAULT_DATA if opts.default_data is None else opts.default_data:
        if candidate.is_dir():
            return candidate, "found"
    marker = opts.download_dir / DOWNLOAD_MARKER
    if marker.is_file():
        previous = Path(marker.read_text().strip())
        if previous.is_dir():
            return previous, "found"
    log.info("no gallery found; downloading Stanford Dogs into %s", opts.download_dir)
    try:
        gallery = (downloader or _download_stanford_dogs)(opts.download_dir)
    except (RuntimeError, OSError) as exc:
        raise FirstRunError(offline_message(str(exc), opts.download_dir)) from exc
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(str(gallery.resolve()))
    return gallery, "downloaded"


def data_fingerprint(data: Path) -> str:
    from model.data.galleries import gallery_fingerprint, scan_gallery

    return gallery_fingerprint(scan_gallery(data))


def _trained_fingerprint(checkpoint: Path) -> str | None:
    from model.core.checkpoint import load_checkpoint

    try:
        fingerprint = load_checkpoint(checkpoint).train_args.get("data_fingerprint")
    except ValueError as exc:  # damaged or of another format: train again rather than fail
        log.warning("ignoring %s: %s", checkpoint, exc)
        return None
    return str(fingerprint) if fingerprint else None


def _run_training(argv: list[str]) -> None:
    from model.training.train import main as train_main

    code = train_main(argv)
    if code:
        raise FirstRunError(f"Training failed (exit code {code}): imgsim train {' '.join(argv)}")


def ensure_model(data: Path, fingerprint: str, opts: UpOptions) -> tuple[Path, str]:
    """``RUN_DIR/best.pt``, reused when trained on this very gallery, else trained now."""
    best = opts.run_dir / "best.pt"
    if best.is_file() and not opts.retrain:
        trained_on = _trained_fingerprint(best)
        if trained_on == fingerprint:
            return best, "reused"
        log.info("%s was trained on other data (or its files changed since): training again", best)
    scratch = opts.run_dir.with_name(f".{opts.run_dir.name}.training")
    shutil.rmtree(scratch, ignore_errors=True)
    argv = ["--data", str(data), "--out", str(scratch), "--device", opts.device, *opts.train_args]
    log.info("training: imgsim train %s", " ".join(argv))
    _run_training(argv)
    if not (scratch / "best.pt").is_file():
        raise FirstRunError(f"Training finished without writing {scratch / 'best.pt'}.")
    _replace_dir(scratch, opts.run_dir)
    return best, "trained"


def _replace_dir(new: Path, target: Path) -> None:
    """Swap ``new`` in for ``target``; the old one is removed only after the rename."""
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    new.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def _read_state(run_dir: Path) -> dict[str, str]:
    try:
        state = json.loads((run_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def _index_matches(index_dir: Path, model_hash: str, dim: int) -> bool | None:
    """True: opens and was built by this model; False: built by another; None: missing or unreadable."""
    from index import GalleryIndex, IndexMismatchError

    try:
        GalleryIndex.open(index_dir, model_hash=model_hash, dim=dim)
    except FileNotFoundError:
        return None
    except IndexMismatchError:
        return False
    except (ValueError, OSError) as exc:  # damaged: a fresh build is the repair
        log.warning("index %s cannot be opened (%s): building it again", index_dir, exc)
        return None
    return True


def ensure_index(checkpoint: Path, data: Path, fingerprint: str, opts: UpOptions) -> str:
    """The index at ``opts.index_dir`` for this checkpoint and gallery: reused, updated or built."""
    from index import build_gallery_index, update_gallery_index
    from model.core.checkpoint import load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    state = {
        "checkpoint_hash": ckpt.hash,
        "data_fingerprint": fingerprint,
        "index_dir": str(opts.index_dir.resolve()),
    }
    matches = _index_matches(opts.index_dir, ckpt.hash, ckpt.config.embedding_dim)
    if matches and _read_state(opts.run_dir) == state:
        return "reused"
    ray = None
    if opts.ray is not None:
        from index.ray_embed import RayOptions

        ray = RayOptions(address=opts.ray or None)
    if matches:
        # Same model, gallery possibly changed: only new or changed files are embedded.
        update_gallery_index(ckpt, data, opts.index_dir, device=opts.device, ray=ray)
        action = "updated"
    else:
        # Another model's vectors cannot be mixed with this one's: build afresh beside it, then swap.
        scratch = opts.index_dir.with_name(f".{opts.index_dir.name}.building")
        if ray is None or not (scratch / "ray-build.json").is_file():  # an interrupted Ray build resumes
            shutil.rmtree(scratch, ignore_errors=True)
        scratch.parent.mkdir(parents=True, exist_ok=True)
        build_gallery_index(ckpt, data, scratch, device=opts.device, ray=ray)
        _replace_dir(scratch, opts.index_dir)
        action = "built"
    (opts.run_dir / STATE_FILE).write_text(json.dumps(state, indent=2))
    return action


def prepare(opts: UpOptions, downloader: Downloader | None = None) -> Prepared:
    """Data, model and index, each reused when still valid. Everything ``imgsim up`` does before serving."""
    data, found = resolve_data(opts, downloader)
    log.info("[1/3] data: %s (%s)", data, found)
    fingerprint = data_fingerprint(data)
    checkpoint, trained = ensure_model(data, fingerprint, opts)
    log.info("[2/3] model: %s (%s)", checkpoint, trained)
    indexed = ensure_index(checkpoint, data, fingerprint, opts)
    log.info("[3/3] index: %s (%s)", opts.index_dir, indexed)
    return Prepared(data, checkpoint, opts.index_dir, {"data": found, "model": trained, "index": indexed})


def serve_settings(prepared: Prepared, opts: UpOptions) -> dict[str, object]:
    """The service settings (app/settings.py) that serve what was prepared; the rest come from IMGSIM_*."""
    return {
        "checkpoint": prepared.checkpoint.resolve(),
        "index": prepared.index_dir.resolve(),
        "device": opts.device,
        "host": opts.host,
        "port": opts.port,
    }


def public_urls(host: str, port: int) -> tuple[str, str]:
    """The page and API-docs URLs a person can open: a wildcard bind address is reached on localhost."""
    shown = "localhost" if host in ("0.0.0.0", "::", "") else host
    if ":" in shown:
        shown = f"[{shown}]"
    base = f"http://{shown}:{port}"
    return f"{base}/", f"{base}/docs"


def wait_until_healthy(url: str, stop: threading.Event, poll_s: float = 0.5) -> bool:
    """Poll ``url`` until it answers 2xx (True) or ``stop`` is set (False)."""
    while not stop.is_set():
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if 200 <= response.status < 300:
                    return True
        except (OSError, ValueError):  # refused while starting, 503 while loading
            pass
        stop.wait(poll_s)
    return False


def serve(
    prepared: Prepared, opts: UpOptions, on_ready: Callable[[str, str], None], base: Settings | None = None
) -> int:
    """Run the service on what was prepared, in this thread (so Ctrl+C and SIGTERM reach uvicorn);
    ``on_ready(page_url, docs_url)`` is called from a watcher thread once ``/readyz`` answers. The other
    settings are ``base`` (the command's), else read from the environment and ``.env``."""
    from app.serve_cli import serve as serve_app
    from app.settings import Settings

    settings = (base or Settings()).model_copy(update=serve_settings(prepared, opts))
    page, docs = public_urls(opts.host, opts.port)
    wildcard = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "[::1]"}
    probe_host = wildcard.get(opts.host, f"[{opts.host}]" if ":" in opts.host else opts.host)
    ready = f"http://{probe_host}:{opts.port}/readyz"  # model and gallery loaded
    stop = threading.Event()

    def announce() -> None:
        if wait_until_healthy(ready, stop):
            on_ready(page, docs)

    watcher = threading.Thread(target=announce, name="imgsim-up-ready", daemon=True)
    watcher.start()
    try:
        return serve_app(settings)
    finally:
        stop.set()
