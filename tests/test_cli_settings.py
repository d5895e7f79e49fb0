"""One settings model for every command (flag > IMGSIM_* > .env > default), one default location for the model
and the gallery, one option vocabulary with the old spellings as aliases, and inputs checked before loading."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from app import first_run, locations, up_cli
from app.cli import build_parser, main, settings_from_args
from app.settings import Settings
from index import build_gallery_index

NAMES = ("DATA_DIR", "RUN_DIR", "INDEX", "CHECKPOINT", "DEVICE", "PORT", "HOST", "TRAIN_ARGS", "SETUP_COMMAND")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A folder of its own (so no .env of the checkout leaks in) and none of the variables set."""
    for name in NAMES:
        monkeypatch.delenv(f"IMGSIM_{name}", raising=False)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


def parsed(*argv: str) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    settings_from_args(args)
    return args


def test_up_reads_dot_env_below_the_environment_and_the_flags(monkeypatch: pytest.MonkeyPatch, clean_env: Path) -> None:
    """The issue's case: .env said /srv/photos and port 9000, and `up` used the dog photos and port 8000."""
    (clean_env / ".env").write_text("IMGSIM_DATA_DIR=/srv/photos\nIMGSIM_PORT=9000\nIMGSIM_RUN_DIR=runs/mine\n")
    opts = up_cli.options_from_args(parsed("up"))
    assert (opts.data, opts.port, opts.run_dir) == (Path("/srv/photos"), 9000, Path("runs/mine"))

    monkeypatch.setenv("IMGSIM_PORT", "9100")  # the environment beats .env
    opts = up_cli.options_from_args(parsed("up"))
    assert (opts.data, opts.port) == (Path("/srv/photos"), 9100)

    opts = up_cli.options_from_args(parsed("up", "--port", "9200", "--data", "/elsewhere"))  # flags beat both
    assert (opts.data, opts.port, opts.run_dir) == (Path("/elsewhere"), 9200, Path("runs/mine"))

    (clean_env / ".env").unlink()
    monkeypatch.delenv("IMGSIM_PORT")
    opts = up_cli.options_from_args(parsed("up"))
    assert (opts.data, opts.port, opts.run_dir, opts.index_dir) == (
        None,
        8000,
        Path("runs/default"),
        Path("indexes/default"),
    )


def test_every_command_fills_the_same_settings(monkeypatch: pytest.MonkeyPatch, clean_env: Path) -> None:
    (clean_env / ".env").write_text("IMGSIM_INDEX=galleries/dogs\nIMGSIM_DEVICE=cpu\nIMGSIM_RUN_DIR=runs/r1\n")
    assert parsed("index", "info").index == Path("galleries/dogs")
    assert parsed("search", "q.jpg").device == "cpu"
    assert parsed("serve").settings.index == Path("galleries/dogs")
    assert parsed("index", "build").checkpoint == Path("runs/r1/best.pt")  # a new gallery: RUN_DIR's model
    assert parsed("train", "--data", "x").out == Path("runs/r1")
    assert parsed("compare", "a", "b").checkpoint == Path("runs/r1/best.pt")  # no gallery records one
    monkeypatch.setenv("IMGSIM_DEVICE", "cuda:1")
    assert parsed("eval", "--data", "d").device == "cuda:1"
    assert parsed("eval", "--data", "d", "--device", "cpu").device == "cpu"


def test_serve_and_search_take_the_model_the_gallery_records(
    tiny_checkpoint: Path, synthetic_gallery: Path, clean_env: Path
) -> None:
    """`make run` writes runs/default/best.pt; a gallery built elsewhere records its own checkpoint, and a bare
    `imgsim serve` / `imgsim search` must load that one rather than a default that does not match."""
    index = clean_env / "indexes" / "default"
    build_gallery_index(tiny_checkpoint, synthetic_gallery, index, num_workers=0, progress=False)
    assert locations.recorded_checkpoint(index) == tiny_checkpoint.resolve()
    assert locations.model_checkpoint(Settings()) == tiny_checkpoint.resolve()
    assert parsed("search", "q.png").checkpoint == tiny_checkpoint.resolve()
    assert locations.model_checkpoint(Settings(checkpoint=Path("x.pt"))) == Path("x.pt")  # named wins
    # Without a gallery: RUN_DIR/best.pt, the one place `make run` trains into.
    assert locations.model_checkpoint(Settings(index=clean_env / "none")) == Path("runs/default/best.pt")


def test_a_missing_model_names_the_one_shot_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert "No trained model at runs/default/best.pt" in err and "Run `make run` once" in err
    monkeypatch.setenv("IMGSIM_SETUP_COMMAND", "docker compose run --rm setup")  # what compose sets
    assert main(["serve"]) == 2
    assert "Run `docker compose run --rm setup` once" in capsys.readouterr().err


def test_compare_names_a_missing_or_bad_file_before_loading_the_model(
    tiny_checkpoint: Path, synthetic_gallery: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import model.evaluation.report as report

    def no_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded before the inputs were checked")

    monkeypatch.setattr(report, "Embedder", no_model)
    good = str(next(synthetic_gallery.glob("*/*.png")))
    text = Path("notes.txt")
    text.write_text("not an image")
    for argv, named in (
        (["compare", good, "missing.jpg", "--checkpoint", str(tiny_checkpoint)], "missing.jpg: no such file"),
        (["compare", "gone.jpg", good, "--checkpoint", str(tiny_checkpoint)], "gone.jpg: no such file"),
        (["compare", good, str(text), "--checkpoint", str(tiny_checkpoint)], "notes.txt: unsupported_format"),
        (["compare", good, good, "--checkpoint", "nope.pt"], "No trained model at nope.pt"),
        (["search", "--index", "idx", good], "No index at idx"),
        (["index", "add", "--index", "idx", "a.png"], "No index at idx"),
    ):
        assert main(argv) == 2, argv
        assert named in capsys.readouterr().err, argv


def test_compare_still_works_end_to_end(
    tiny_checkpoint: Path, synthetic_gallery: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = next(synthetic_gallery.glob("red_circles/*.png"))
    assert main(["compare", str(a), str(a), "--checkpoint", str(tiny_checkpoint), "--device", "cpu", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["dissimilarity"] == pytest.approx(0.0, abs=1e-5) and result["same"] is True


def leaf_parsers(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> dict[tuple[str, ...], argparse.ArgumentParser]:
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found |= leaf_parsers(sub, (*path, name))
    return found or {path: parser}


def test_every_option_has_help_and_every_result_can_be_json() -> None:
    leaves = leaf_parsers(build_parser())
    assert ("index", "build") in leaves and ("search",) in leaves and ("up",) in leaves
    for path, parser in leaves.items():
        for action in parser._actions:
            if not isinstance(action, argparse._HelpAction):
                assert action.help, f"imgsim {' '.join(path)}: {action.option_strings or action.dest} has no help"
        has_json = any("--json" in a.option_strings for a in parser._actions)
        assert has_json == (path != ("serve",)), f"imgsim {' '.join(path)}: --json"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["index", "build", "--gallery", "g", "--out", "i"], {"data": "g", "index": "i"}),
        (["index", "build", "--data", "g", "--index", "i"], {"data": "g", "index": "i"}),
        (["index", "update", "--gallery", "g"], {"data": "g"}),
        (["up", "--index-dir", "i", "--gallery", "g"], {"index": Path("i"), "data": Path("g")}),
        (["up", "--index", "i", "--data", "g"], {"index": Path("i"), "data": Path("g")}),
        (["train", "--out", "r", "--gallery", "g"], {"out": "r", "data": "g"}),
        (["train", "--run-dir", "r", "--data", "g"], {"out": "r", "data": "g"}),
        (["eval", "--data", "d", "--out", "p"], {"plots": "p"}),
        (["search", "q.png", "--k", "3"], {"k": 3}),
    ],
)
def test_old_spellings_are_aliases(argv: list[str], expected: dict[str, object]) -> None:
    args = build_parser().parse_args(argv)
    assert {k: getattr(args, k) for k in expected} == expected


def test_up_no_serve_json(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    prepared = first_run.Prepared(Path("g"), Path("runs/default/best.pt"), Path("indexes/default"), {"model": "reused"})
    monkeypatch.setattr(first_run, "prepare", lambda opts: prepared)
    assert main(["up", "--no-serve", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "data": "g",
        "checkpoint": "runs/default/best.pt",
        "index": "indexes/default",
        "actions": {"model": "reused"},
    }
