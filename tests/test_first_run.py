"""``imgsim up``'s first-run logic on synthetic galleries with the tiny model: data resolution, the offline
message, model reuse versus retraining, and index reuse / update / rebuild. Serving is not started."""

from __future__ import annotations

import argparse
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from app import first_run, up_cli
from app.cli import build_parser
from app.first_run import FirstRunError, UpOptions
from app.settings import Settings
from index import GalleryIndex
from model.core.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from model.core.network import ModelConfig, SiameseNetwork

# Not imported from tests/conftest.py: with conftest.py files in subfolders, `import conftest` is ambiguous.
TINY_CONFIG = {
    "backbone": "seed-cnn",
    "embedding_dim": 16,
    "head": "residual",
    "hidden_dim": 32,
    "image_size": 64,
    "pretrained": False,
}


def new_photo(path: Path, seed: int) -> Path:
    """A small random-noise PNG: a file the gallery has not seen."""
    pixels = np.random.default_rng(seed).integers(0, 255, size=(72, 72, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def small_gallery(root: Path, classes: tuple[str, ...] = ("a", "b"), per_class: int = 1) -> Path:
    for i, label in enumerate(classes):
        for k in range(per_class):
            new_photo(root / label / f"{label}_{k}.png", seed=100 * i + k)
    return root


TINY_TRAIN_ARGS = [
    "--backbone",
    TINY_CONFIG["backbone"],
    "--embedding-dim",
    str(TINY_CONFIG["embedding_dim"]),
    "--image-size",
    str(TINY_CONFIG["image_size"]),
    "--no-pretrained",
    "--mode",
    "finetune",
    "--max-steps",
    "2",
    "--epochs",
    "1",
    "--no-progress",
    "--batch-size",
    "8",
    "--workers",
    "0",
]


def offline(dest: Path) -> Path:
    raise RuntimeError("cannot reach the Stanford Dogs server: network is unreachable")


def never_download(dest: Path) -> Path:
    raise AssertionError("a download was attempted although a gallery was available")


def options(tmp_path: Path, gallery: Path | None, **kw: object) -> UpOptions:
    base = dict(
        data=gallery,
        run_dir=tmp_path / "runs" / "default",
        index_dir=tmp_path / "indexes" / "default",
        download_dir=tmp_path / "data" / "stanford-dogs",
        default_data=(),
        device="cpu",
        train_args=TINY_TRAIN_ARGS,
    )
    base.update(kw)
    return UpOptions(**base)  # type: ignore[arg-type]


def save_trained(path: Path, gallery: Path, seed: int = 0) -> Checkpoint:
    """A checkpoint that says it was trained on ``gallery`` (what `imgsim train` records)."""
    torch.manual_seed(seed)
    ckpt = Checkpoint(SiameseNetwork(ModelConfig(**TINY_CONFIG)).eval(), class_names=["a"], threshold=0.5)
    ckpt.train_args = {"data": str(gallery), "data_fingerprint": first_run.data_fingerprint(gallery)}
    save_checkpoint(ckpt, path)
    return ckpt


# ---- data ------------------------------------------------------------------------------------------------


def test_explicit_data_is_used_and_a_wrong_one_is_not_replaced(tmp_path: Path, synthetic_gallery: Path) -> None:
    decoy = small_gallery(tmp_path / "decoy")
    opts = options(tmp_path, synthetic_gallery, default_data=(decoy,))
    assert first_run.resolve_data(opts, never_download) == (synthetic_gallery, "given")
    missing = options(tmp_path, tmp_path / "nope", default_data=(decoy,))
    with pytest.raises(FirstRunError, match="does not exist"):
        first_run.resolve_data(missing, never_download)


def test_default_folder_then_previous_download_then_download(tmp_path: Path) -> None:
    present = small_gallery(tmp_path / "shared" / "dogs")
    opts = options(tmp_path, None, default_data=(tmp_path / "absent", present))
    assert first_run.resolve_data(opts, never_download) == (present, "found")

    downloaded = small_gallery(tmp_path / "dl" / "Images")
    calls: list[Path] = []

    def fake_download(dest: Path) -> Path:
        calls.append(dest)
        return downloaded

    opts = options(tmp_path, None)
    assert first_run.resolve_data(opts, fake_download) == (downloaded, "downloaded")
    assert calls == [opts.download_dir]
    # A finished download is found again without going online.
    assert first_run.resolve_data(opts, offline) == (downloaded.resolve(), "found")


def test_offline_without_data_says_exactly_what_to_do(tmp_path: Path) -> None:
    opts = options(tmp_path, None)
    with pytest.raises(FirstRunError) as err:
        first_run.prepare(opts, offline)
    message = str(err.value)
    assert "network is unreachable" in message
    assert "IMGSIM_DATA_DIR=/path/to/photos make run" in message
    assert f"imgsim data stanford-dogs {opts.download_dir}" in message
    # Nothing was made up: no run, no index, no fake gallery.
    assert not (tmp_path / "runs").exists() and not (tmp_path / "indexes").exists()
    assert not opts.download_dir.exists()


def test_up_command_prints_the_offline_message_and_exits_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # no ../shared/data/dogs from here
    monkeypatch.delenv("IMGSIM_DATA_DIR", raising=False)
    monkeypatch.setattr(first_run, "DEFAULT_DATA", ())
    monkeypatch.setattr(first_run, "_download_stanford_dogs", offline)
    args = build_parser().parse_args(["up", "--no-serve", "--device", "cpu"])
    assert args.func(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("imgsim up: No image gallery was found")
    assert "IMGSIM_DATA_DIR" in err


# ---- options ---------------------------------------------------------------------------------------------


def test_flags_beat_environment_beats_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    parser = build_parser()
    for name in (
        "IMGSIM_DATA_DIR",
        "IMGSIM_RUN_DIR",
        "IMGSIM_INDEX",
        "IMGSIM_DEVICE",
        "IMGSIM_PORT",
        "IMGSIM_HOST",
        "IMGSIM_TRAIN_ARGS",
    ):
        monkeypatch.delenv(name, raising=False)
    plain = up_cli.options_from_args(parser.parse_args(["up"]))
    assert (plain.data, plain.run_dir, plain.index_dir) == (
        None,
        Path("runs/default"),
        Path("indexes/default"),
    )
    assert (plain.device, plain.port, plain.train_args) == ("auto", 8000, ["--mode", "frozen"])

    monkeypatch.setenv("IMGSIM_DATA_DIR", "/photos")
    monkeypatch.setenv("IMGSIM_PORT", "9000")
    monkeypatch.setenv("IMGSIM_TRAIN_ARGS", "--mode finetune --epochs 2")
    env = up_cli.options_from_args(parser.parse_args(["up"]))
    assert (env.data, env.port, env.train_args) == (
        Path("/photos"),
        9000,
        ["--mode", "finetune", "--epochs", "2"],
    )
    flags = up_cli.options_from_args(parser.parse_args(["up", "--data", "/other", "--port", "9100"]))
    assert (flags.data, flags.port) == (Path("/other"), 9100)

    monkeypatch.setenv("IMGSIM_PORT", "eighty")
    with pytest.raises(ValueError, match="IMGSIM_PORT"):
        up_cli.options_from_args(parser.parse_args(["up"]))


def test_urls_and_serve_settings() -> None:
    assert first_run.public_urls("0.0.0.0", 8000) == ("http://localhost:8000/", "http://localhost:8000/docs")
    assert first_run.public_urls("10.1.2.3", 81) == ("http://10.1.2.3:81/", "http://10.1.2.3:81/docs")
    prepared = first_run.Prepared(Path("g"), Path("runs/x/best.pt"), Path("idx"), {})
    values = first_run.serve_settings(prepared, UpOptions(device="cpu", host="0.0.0.0", port=8123))
    # The names are the service's own settings, so `imgsim serve` gets exactly what was prepared.
    settings = Settings(**values)  # type: ignore[arg-type]
    assert settings.checkpoint == Path("runs/x/best.pt").resolve() and settings.index == Path("idx").resolve()
    assert (settings.device, settings.host, settings.port) == ("cpu", "0.0.0.0", 8123)


class _Ready(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/readyz" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        return None


def test_serve_announces_the_urls_once_the_service_is_ready(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The serve step runs the service in this thread and prints the URLs only when /readyz answers."""
    announced: list[tuple[str, str]] = []
    seen: list[Settings] = []
    done = threading.Event()

    def fake_serve(settings: Settings) -> int:  # stands in for uvicorn: answers /readyz after a while
        seen.append(settings)
        time.sleep(0.3)
        assert not announced  # nothing announced before the service answers
        server = ThreadingHTTPServer((settings.host, settings.port), _Ready)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        done.wait(10)
        server.shutdown()
        server.server_close()
        return 0

    monkeypatch.setattr("app.serve_cli.serve", fake_serve)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    prepared = first_run.Prepared(tmp_path, tmp_path / "best.pt", tmp_path / "idx", {})
    opts = UpOptions(device="cpu", host="127.0.0.1", port=port)

    def on_ready(page: str, docs: str) -> None:
        announced.append((page, docs))
        done.set()

    assert first_run.serve(prepared, opts, on_ready) == 0
    assert announced == [(f"http://127.0.0.1:{port}/", f"http://127.0.0.1:{port}/docs")]
    assert seen[0].checkpoint == (tmp_path / "best.pt").resolve() and seen[0].port == port


# ---- model and index -------------------------------------------------------------------------------------


def forbid_training(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(argv: list[str]) -> None:
        raise AssertionError(f"training ran although best.pt matched: {argv}")

    monkeypatch.setattr(first_run, "_run_training", fail)


def test_matching_model_and_index_are_reused_then_updated_when_files_change(
    tmp_path: Path, synthetic_gallery: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opts = options(tmp_path, synthetic_gallery)
    ckpt = save_trained(opts.run_dir / "best.pt", synthetic_gallery)
    forbid_training(monkeypatch)

    first = first_run.prepare(opts, never_download)
    assert first.actions == {"data": "given", "model": "reused", "index": "built"}
    gi = GalleryIndex.open(opts.index_dir, model_hash=ckpt.hash)
    assert gi.count == 4 * 12

    second = first_run.prepare(opts, never_download)
    assert second.actions["model"] == "reused" and second.actions["index"] == "reused"
    assert GalleryIndex.open(opts.index_dir).version == gi.version  # not rewritten

    # A new photo changes the fingerprint: the model no longer matches, so training would run; here we
    # record a checkpoint for the new contents by hand and check that the index is rebuilt for it.
    new_photo(synthetic_gallery / "red_circles" / "new.png", seed=7)
    assert first_run.data_fingerprint(synthetic_gallery) != ckpt.train_args["data_fingerprint"]
    other = save_trained(opts.run_dir / "best.pt", synthetic_gallery, seed=1)
    third = first_run.prepare(opts, never_download)
    assert third.actions == {"data": "given", "model": "reused", "index": "built"}
    rebuilt = GalleryIndex.open(opts.index_dir, model_hash=other.hash)
    assert rebuilt.count == 4 * 12 + 1


def test_same_model_changed_gallery_updates_only_the_difference(
    tmp_path: Path, synthetic_gallery: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opts = options(tmp_path, synthetic_gallery)
    ckpt = save_trained(opts.run_dir / "best.pt", synthetic_gallery)
    forbid_training(monkeypatch)
    first_run.prepare(opts, never_download)
    # The recorded state says which gallery the index holds; a lost state file forces an update check,
    # which finds nothing to do and keeps the index version.
    version = GalleryIndex.open(opts.index_dir).version
    (opts.run_dir / first_run.STATE_FILE).unlink()
    assert first_run.ensure_index(opts.run_dir / "best.pt", synthetic_gallery, "fp", opts) == "updated"
    assert GalleryIndex.open(opts.index_dir).version == version
    state = json.loads((opts.run_dir / first_run.STATE_FILE).read_text())
    assert state["checkpoint_hash"] == ckpt.hash and state["data_fingerprint"] == "fp"

    # One file removed, one added: the update drops one and embeds one, by the same model.
    (synthetic_gallery / "green_squares" / "green_squares_000.png").unlink()
    new_photo(synthetic_gallery / "blue_triangles" / "x.png", seed=3)
    assert first_run.ensure_index(opts.run_dir / "best.pt", synthetic_gallery, "fp2", opts) == "updated"
    gi = GalleryIndex.open(opts.index_dir, model_hash=ckpt.hash)
    paths = {r.path for r in gi.all_records()}
    assert "blue_triangles/x.png" in paths and "green_squares/green_squares_000.png" not in paths
    assert gi.count == 4 * 12


def test_damaged_checkpoint_is_retrained_not_reused(
    tmp_path: Path, synthetic_gallery: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opts = options(tmp_path, synthetic_gallery)
    (opts.run_dir).mkdir(parents=True)
    (opts.run_dir / "best.pt").write_bytes(b"not a checkpoint")
    fingerprint = first_run.data_fingerprint(synthetic_gallery)
    assert first_run._trained_fingerprint(opts.run_dir / "best.pt") is None
    calls: list[list[str]] = []

    def fake_train(argv: list[str]) -> None:
        calls.append(argv)
        out = Path(argv[argv.index("--out") + 1])
        save_trained(out / "best.pt", synthetic_gallery)

    monkeypatch.setattr(first_run, "_run_training", fake_train)
    path, action = first_run.ensure_model(synthetic_gallery, fingerprint, opts)
    assert action == "trained" and path == opts.run_dir / "best.pt"
    # Trained into a scratch folder that replaced the run only once it held best.pt.
    scratch = opts.run_dir.with_name(".default.training")
    assert calls == [["--data", str(synthetic_gallery), "--out", str(scratch), "--device", "cpu", *TINY_TRAIN_ARGS]]
    assert load_checkpoint(path).train_args["data_fingerprint"] == fingerprint
    assert not any(p.name.startswith(".default") for p in opts.run_dir.parent.iterdir())


@pytest.mark.slow
def test_up_no_serve_command_end_to_end_with_real_training(
    tmp_path: Path,
    synthetic_gallery: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The real `imgsim train` and index build under `imgsim up`, then a rerun that reuses both."""
    pytest.importorskip("model.training.train")
    monkeypatch.chdir(tmp_path)
    argv = [
        "up",
        "--no-serve",
        "--data",
        str(synthetic_gallery),
        "--device",
        "cpu",
        "--train-args",
        " ".join(TINY_TRAIN_ARGS),
    ]
    args = build_parser().parse_args(argv)
    assert args.func(args) == 0
    best = tmp_path / "runs" / "default" / "best.pt"
    ckpt = load_checkpoint(best)
    assert ckpt.train_args["data_fingerprint"] == first_run.data_fingerprint(synthetic_gallery)
    gi = GalleryIndex.open(tmp_path / "indexes" / "default", model_hash=ckpt.hash)
    assert gi.count == 4 * 12
    assert "ready to serve" in capsys.readouterr().out

    mtime = best.stat().st_mtime_ns
    forbid_training(monkeypatch)
    args = build_parser().parse_args(argv)
    assert args.func(args) == 0
    assert best.stat().st_mtime_ns == mtime
    assert GalleryIndex.open(tmp_path / "indexes" / "default").version == gi.version


def test_parser_accepts_up(tmp_path: Path) -> None:
    args = build_parser().parse_args(["up", "--no-serve", "--retrain", "--run-dir", str(tmp_path)])
    assert isinstance(args, argparse.Namespace) and args.no_serve and args.retrain
    assert args.func is up_cli.run
