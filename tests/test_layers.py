"""The import layering: model <- index <- app <- bench, and inside model/ core <- data <- inference <-
evaluation <- training. Each package may import only from those to its left (and itself); the command line
(model/cli.py) sits above them all. Imports inside functions count too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# package -> the packages it may import from (besides itself)
ALLOWED = {
    "model.core": set(),
    "model.data": {"model.core"},
    "model.inference": {"model.core", "model.data"},
    "model.evaluation": {"model.core", "model.data", "model.inference"},
    "model.training": {"model.core", "model.data", "model.inference", "model.evaluation"},
    "model": set(),  # model/cli.py: itself, and so every sub-package
    "index": {"model"},
    "app": {"model", "index"},
    "bench": {"model", "index", "app"},
}
OURS = ("model", "index", "app", "bench")


def package_of(module: str) -> str:
    """The most specific key of ALLOWED that ``module`` belongs to."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in ALLOWED:
            return ".".join(parts[:n])
    raise AssertionError(f"{module} belongs to no layer")


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return {name for name in found if name.split(".")[0] in OURS}


def allowed(own: str, target: str) -> bool:
    below = ALLOWED[own] | {own}
    return any(target == b or target.startswith(b + ".") for b in below)


def violations(root: Path, files: list[Path]) -> list[str]:
    wrong = []
    for path in files:
        relative = path.relative_to(root)
        own = package_of(".".join(relative.with_suffix("").parts))
        wrong += [f"{relative} imports {name}" for name in sorted(imports(path)) if not allowed(own, package_of(name))]
    return wrong


@pytest.mark.parametrize("top", OURS)
def test_no_import_runs_the_wrong_way(top: str) -> None:
    files = sorted((ROOT / top).rglob("*.py"))
    assert files
    assert violations(ROOT, files) == []


def test_the_check_catches_a_wrong_import(tmp_path: Path) -> None:
    core = tmp_path / "model" / "core"
    core.mkdir(parents=True)
    (core / "bad.py").write_text("def f():\n    from model.training.losses import build_loss\n")
    (core / "good.py").write_text("from model.core.images import load_image\nimport numpy\n")
    (tmp_path / "model" / "cli.py").write_text("import model.training.train\n")
    (tmp_path / "index.py").write_text("from app.errors import ServiceError\n")
    files = sorted(tmp_path.rglob("*.py"))
    assert violations(tmp_path, files) == [
        "index.py imports app.errors",
        "model/core/bad.py imports model.training.losses",
    ]
