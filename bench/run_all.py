"""Run every benchmark of the project and rewrite its section of BENCHMARKS.md.

    .venv/bin/python -m bench.run_all [--quick] [--only embedding,index] [--output BENCHMARKS.md]

Each ``bench/bench_<name>.py`` exposes ``run(quick: bool = False) -> str`` (a Markdown section with the
machine, the command and the date). Its output replaces only the text between
``<!-- bench:<name>:start -->`` and ``<!-- bench:<name>:end -->``; a section seen for the first time is
appended, and everything written by hand around the markers is kept. A benchmark that fails leaves its old
section as it was, and the command exits non-zero after running the others.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import logging
import os
import platform
import re
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

from model.core.files import write_atomic

log = logging.getLogger("bench.run_all")

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_OUTPUT = BENCH_DIR.parent / "BENCHMARKS.md"
HEADER = (
    "# Benchmarks\n\n"
    "Measured numbers of this project. The sections between `<!-- bench:NAME:start/end -->` markers are\n"
    "rewritten by `python -m bench.run_all`; text outside the markers is written by hand and kept.\n"
)


def discover() -> list[str]:
    """Names of the benchmarks present: ``bench/bench_<name>.py`` -> ``name``, sorted."""
    return sorted(p.stem.removeprefix("bench_") for p in BENCH_DIR.glob("bench_*.py"))


def markers(name: str) -> tuple[str, str]:
    return f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"


def replace_section(text: str, name: str, body: str) -> str:
    """``text`` with the section ``name`` set to ``body`` (appended at the end when it has no markers)."""
    start, end = markers(name)
    block = f"{start}\n{body.strip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        return pattern.sub(lambda _: block, text, count=1)
    return text.rstrip("\n") + "\n\n" + block + "\n"


def update_file(path: Path, sections: dict[str, str]) -> None:
    text = path.read_text(encoding="utf-8") if path.is_file() else HEADER
    for name, body in sections.items():
        text = replace_section(text, name, body)
    write_atomic(path, text)


def footer(command: str, seconds: float) -> str:
    return (
        f"\n<sub>Written by `{command}` on {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC "
        f"({platform.node() or 'host'}, {os.cpu_count()} CPUs) in {seconds:.0f} s.</sub>\n"
    )


def run_one(name: str, quick: bool) -> str:
    module = importlib.import_module(f"bench.bench_{name}")
    if not callable(getattr(module, "run", None)):
        raise TypeError(f"bench/bench_{name}.py has no run(quick) function")
    return str(module.run(quick=quick))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the benchmarks and rewrite BENCHMARKS.md.")
    parser.add_argument("--quick", action="store_true", help="each benchmark's short version")
    parser.add_argument("--only", default="", help="comma-separated names, e.g. embedding,index")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="the Markdown file to update")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    available = discover()
    names = [n.strip() for n in re.split(r"[,\s]+", args.only) if n.strip()] or available
    unknown = sorted(set(names) - set(available))
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}. Available: {', '.join(available)}.")
    command = "python -m bench.run_all" + (" --quick" if args.quick else "")
    command += f" --only {','.join(names)}" if args.only else ""

    failed = []
    for name in names:
        log.info("running bench_%s%s", name, " (quick)" if args.quick else "")
        started = time.perf_counter()
        try:
            body = run_one(name, args.quick)
        except Exception:  # one broken benchmark must not cost the others their results
            log.error("bench_%s failed; its section is left as it was\n%s", name, traceback.format_exc())
            failed.append(name)
            continue
        # Written after each benchmark, so a later crash or interrupt keeps the numbers already measured.
        update_file(args.output, {name: body + footer(command, time.perf_counter() - started)})
        log.info("bench_%s: section written to %s", name, args.output)
    if failed:
        log.error("failed: %s", ", ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
