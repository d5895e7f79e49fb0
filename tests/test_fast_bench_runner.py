"""bench.run_all rewrites only its marked sections of BENCHMARKS.md and keeps hand-written text."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import run_all

HAND = (
    "# Benchmarks\n\nHand-written intro.\n\n"
    "<!-- bench:embedding:start -->\nold numbers\n<!-- bench:embedding:end -->\n\nNotes.\n"
)


def test_replace_section_keeps_text_around_the_markers() -> None:
    out = run_all.replace_section(HAND, "embedding", "### new\n| a |")
    assert out == HAND.replace("old numbers", "### new\n| a |")
    assert run_all.replace_section(out, "embedding", "### new\n| a |") == out  # idempotent


def test_new_section_is_appended_and_others_untouched() -> None:
    out = run_all.replace_section(HAND, "index", "index table")
    assert out.startswith(HAND.rstrip("\n"))
    assert out.endswith("<!-- bench:index:start -->\nindex table\n<!-- bench:index:end -->\n")
    again = run_all.replace_section(out, "embedding", r"back\slash \1 kept")  # no regex escapes applied
    assert r"back\slash \1 kept" in again and "index table" in again and "Notes." in again


def test_main_runs_named_benchmarks_and_creates_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, bool]] = []

    def fake_run_one(name: str, quick: bool) -> str:
        calls.append((name, quick))
        if name == "broken":
            raise RuntimeError("boom")
        return f"### {name}\n"

    monkeypatch.setattr(run_all, "discover", lambda: ["broken", "embedding", "index"])
    monkeypatch.setattr(run_all, "run_one", fake_run_one)
    out = tmp_path / "BENCHMARKS.md"
    assert run_all.main(["--quick", "--only", "index,embedding", "--output", str(out)]) == 0
    text = out.read_text()
    assert text.startswith("# Benchmarks") and calls == [("index", True), ("embedding", True)]
    assert text.index("### index") < text.index("### embedding")
    assert "`python -m bench.run_all --quick --only index,embedding`" in text
    assert run_all.main(["--output", str(out)]) == 1  # "broken" failed, the others were still written
    assert out.read_text().count("<!-- bench:index:start -->") == 1
    with pytest.raises(SystemExit):
        run_all.main(["--only", "nope", "--output", str(out)])


def test_every_bench_module_exposes_run() -> None:
    import importlib

    for name in run_all.discover():
        module = importlib.import_module(f"bench.bench_{name}")
        assert callable(module.run), name
