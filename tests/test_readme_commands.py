"""Every command of the README's and docs/deploy.md's ``console`` blocks, and every ``python`` block of the README,
run as written in a checkout laid out as `make run` leaves it: ``.venv``, ``runs/default/best.pt``, the gallery
in ``indexes/default``, and photos under ``../shared/data/dogs`` (a small synthetic set under the real breed and
file names, with a small model, so it takes a minute and not an hour).

Run as written, with two stated exceptions: the service listens on a free port (``IMGSIM_PORT``) and the
URLs' ``:8000`` is rewritten to it, since port 8000 may be taken on a shared machine; and the blocks that cannot
run here are named with their reason (make, Docker, the network). ``text`` blocks are transcripts, not run.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from index import build_gallery_index
from model.core.checkpoint import Checkpoint, save_checkpoint
from model.core.network import ModelConfig, SiameseNetwork
from tests.app.conftest import free_port
from tests.conftest import TINY_CONFIG, draw_shape

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "docs" / "deploy.md"]
# Why a block is not run here; the first rule that matches a command of the block applies to the whole block.
NOT_RUN = [
    (
        re.compile(r"^(IMGSIM_\w+=\S+ )?make "),
        "make: `make run` is what this checkout stands for; `make test` runs this",
    ),
    (re.compile(r"^docker|^mkdir -p data"), "Docker: no engine here (test_container_files parses its imgsim commands)"),
    (re.compile(r"pip-audit"), "needs the network: a vulnerability database"),
]
SERVER = re.compile(r"^imgsim (serve|up)\b(?!.*--no-serve)")
BREEDS = {  # the folders and files the docs name, drawn as the synthetic shapes
    "beagle": ("red_circles", ["ILSVRC2012_val_00005291.jpg", "ILSVRC2012_val_00005922.jpg"]),
    "samoyed": ("blue_triangles", ["ILSVRC2012_val_00000590.jpg"]),
    "dingo": ("green_squares", []),
    "golden_retriever": ("yellow_bars", []),
}
PER_BREED = 10

pytestmark = pytest.mark.slow


@dataclass
class Block:
    doc: str
    line: int
    kind: str  # console or python
    commands: list[str]  # console: `$ ` lines, continuations joined; python: the code


def blocks(path: Path) -> list[Block]:
    found: list[Block] = []
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        match = re.match(r"^```(console|python)\s*$", lines[i])
        if not match:
            i += 1
            continue
        start, body = i + 1, []
        i += 1
        while not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        if match.group(1) == "python":
            found.append(Block(path.name, start, "python", ["\n".join(body)]))
            continue
        joined = re.sub(r"\\\n\s*", " ", "\n".join(body))
        commands = [line[2:] for line in joined.splitlines() if line.startswith("$ ")]
        found.append(Block(path.name, start, "console", commands))
    return found


def why_not_run(block: Block) -> str | None:
    for command in block.commands if block.kind == "console" else []:
        for pattern, reason in NOT_RUN:
            if pattern.search(command):
                return reason
    return None


def make_world(root: Path) -> Path:
    """A checkout after `make run`: returns its folder (the commands' working directory)."""
    repo, dogs = root / "imgsim", root / "shared" / "data" / "dogs"
    rng = np.random.default_rng(0)
    for breed, (shape, names) in BREEDS.items():
        (dogs / breed).mkdir(parents=True)
        for k in range(PER_BREED):
            name = names[k] if k < len(names) else f"n_{breed}_{k:03d}.jpg"
            draw_shape(shape, rng, size=96).convert("RGB").save(dogs / breed / name, quality=92)
    repo.mkdir()
    (repo / ".venv").symlink_to(Path(sys.prefix))
    torch.manual_seed(0)
    model = SiameseNetwork(ModelConfig(**TINY_CONFIG)).eval()
    save_checkpoint(Checkpoint(model, class_names=sorted(BREEDS), threshold=0.5), repo / "runs/default/best.pt")
    build_gallery_index(repo / "runs/default/best.pt", dogs, repo / "indexes/default", num_workers=0, progress=False)
    return repo


class Shell:
    """Runs a document's blocks in order, as one person in one terminal would: the virtual environment stays
    activated from block to block; a server command runs in the background until the block ends."""

    def __init__(self, repo: Path, port: int) -> None:
        self.repo, self.port, self.activated = repo, port, False
        self.env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": os.environ.get("HOME", "/root"),
            "PYTHONPATH": f"{ROOT}:{ROOT / 'clients' / 'python' / 'src'}",  # this checkout's code
            "IMGSIM_PORT": str(port),
            "LANG": "C.UTF-8",
        }

    def as_written(self, text: str) -> str:
        return re.sub(r"(127\.0\.0\.1|localhost):8000\b", f"127.0.0.1:{self.port}", text)

    def prelude(self) -> str:
        return "set -euo pipefail\n" + (". .venv/bin/activate\n" if self.activated else "")

    def run(self, command: str, where: str) -> str:
        done = subprocess.run(
            ["bash", "-c", self.prelude() + self.as_written(command)],
            cwd=self.repo,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, f"{where}: `{command}` exited {done.returncode}\n{done.stdout}\n{done.stderr}"
        if command.strip() == ". .venv/bin/activate":
            self.activated = True
        return done.stdout

    def start_server(self, command: str, where: str) -> subprocess.Popen[str]:
        server = subprocess.Popen(
            ["bash", "-c", self.prelude() + "exec " + command],
            cwd=self.repo,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert server.poll() is None, (
                f"{where}: `{command}` exited: {server.stderr.read() if server.stderr else ''}"
            )
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=2).status_code == 200:
                    return server
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        stop(server)
        raise AssertionError(f"{where}: `{command}` did not become ready")

    def run_python(self, code: str, where: str) -> str:
        done = subprocess.run(
            [sys.executable, "-c", self.as_written(code)],
            cwd=self.repo,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, f"{where}: python block failed\n{done.stderr}"
        return done.stdout


def stop(server: subprocess.Popen[str]) -> None:
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


# What the docs' commands write outside the checkout (they name these paths), removed after the test.
LEFT_IN_TMP = ("imgsim-eval", "imgsim-eval.json", "imgsim-embedding.json", "imgsim-openapi.json",
               "imgsim-openapi.yaml", "imgsim-api-client")  # fmt: skip


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield make_world(tmp_path_factory.mktemp("after-make-run"))
    for name in LEFT_IN_TMP:
        path = Path("/tmp") / name
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)


def run_document(shell: Shell, path: Path) -> dict[str, list[tuple[str, str]]]:
    """Every block of ``path`` in order; returns where the blocks that ran start, and those that did not, why."""
    report: dict[str, list[tuple[str, str]]] = {"ran": [], "not run": []}
    served: subprocess.Popen[str] | None = None  # the service `make run` leaves running, started when needed
    try:
        for block in blocks(path):
            where = f"{block.doc}:{block.line}"
            reason = why_not_run(block)
            if reason:
                report["not run"].append((where, reason))
                continue
            starts_own = any(SERVER.search(c) for c in block.commands) and block.kind == "console"
            needs_service = ":8000" in "\n".join(block.commands) and not starts_own
            if needs_service and served is None:
                served = shell.start_server("imgsim serve", f"{where} (the service of `make run`)")
            if starts_own and served is not None:
                stop(served)
                served = None
            if block.kind == "python":
                shell.run_python(block.commands[0], where)
            else:
                run_console(shell, block, where)
            report["ran"].append((where, block.kind))
    finally:
        if served is not None:
            stop(served)
    return report


def run_console(shell: Shell, block: Block, where: str) -> None:
    server = None
    try:
        for command in block.commands:
            if SERVER.search(command.removeprefix(". .venv/bin/activate && ")):
                server = shell.start_server(command, where)
            else:
                shell.run(command, where)
    finally:
        if server is not None:
            stop(server)


def test_every_command_of_the_readme_and_the_deploy_guide_runs(world: Path) -> None:
    assert shutil.which("curl"), "curl is needed: the docs call the API with it"
    shell = Shell(world, free_port())
    readme = run_document(shell, DOCS[0])
    assert len(readme["ran"]) >= 6 and {why for _, why in readme["not run"]} == {NOT_RUN[0][1]}, readme
    # What the README's commands left behind is real output of the real commands.
    assert (world / "runs/second/best.pt").is_file() and (world / "indexes/second/CURRENT").is_file()
    assert Path("/tmp/imgsim-eval.json").is_file()
    assert Path("/tmp/imgsim-api-client/imgsim_api/api/model/model_card_v1_model_get.py").is_file()
    guide = run_document(Shell(world, free_port()), DOCS[1])
    assert len(guide["ran"]) >= 1, guide
    assert {why for _, why in guide["not run"]} == {reason for _, reason in NOT_RUN}, guide
    # The step-by-step block trained runs/default anew and rebuilt the gallery with it (--replace).
    from index import GalleryIndex
    from model.core.checkpoint import load_checkpoint

    rebuilt = GalleryIndex.open(world / "indexes/default")
    assert rebuilt.model_hash == load_checkpoint(world / "runs/default/best.pt").hash
    assert rebuilt.count == len(BREEDS) * PER_BREED


def test_the_blocks_are_found() -> None:
    found = [b for doc in DOCS for b in blocks(doc)]
    commands = [c for b in found if b.kind == "console" for c in b.commands]
    assert any(c.startswith("imgsim search ") for c in commands) and any(c.startswith("curl ") for c in commands)
    assert sum(b.kind == "python" for b in found) == 2
