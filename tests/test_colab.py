"""Opening a template in Colab: the badge, and the set-up cell run with Colab simulated (no network)."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import nbformat
import pytest

from helpers.notebook import colab
from helpers.paths import TEMPLATES_DIR

TEMPLATES = sorted(TEMPLATES_DIR.glob("*.ipynb"))


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.stem)
def test_every_template_starts_with_the_badge_and_the_current_set_up_cell(path: Path) -> None:
    cells = nbformat.read(path, as_version=4).cells
    assert cells[0].cell_type == "markdown" and cells[0].source == colab.badge(path.stem)
    assert f"/blob/{colab.BRANCH}/templates/{path.stem}.ipynb" in cells[0].source
    assert cells[1].source.startswith("# ")  # the title, then the set-up, then the parameters
    assert cells[2].cell_type == "code" and cells[2].source == colab.setup_source()
    assert "parameters" in cells[3].metadata.get("tags", [])
    assert colab.stamp(path) is False, "python -m helpers.notebook.colab would change this template"


def run_setup_cell(cwd: Path, monkeypatch: pytest.MonkeyPatch, *, in_colab: bool) -> list[list[str]]:
    """Execute the set-up cell's code with subprocess.run recorded (a clone only creates the folder)."""
    commands: list[list[str]] = []

    def fake_run(command: list[str], check: bool = False, **_: Any) -> subprocess.CompletedProcess[str]:
        commands.append(list(command))
        if command[:2] == ["git", "clone"]:
            (Path(command[-1]) / "helpers").mkdir(parents=True)
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(subprocess, "run", fake_run)
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "path", list(sys.path))
    if in_colab:
        monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    else:
        monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    exec(compile(colab.setup_source(), "set-up cell", "exec"), {})
    return commands


def test_in_colab_the_set_up_cell_clones_installs_and_imports_from_the_clone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    commands = run_setup_cell(tmp_path, monkeypatch, in_colab=True)
    checkout = str(tmp_path / Path(colab.REPOSITORY).name)
    assert commands == [
        ["git", "clone", "--depth", "1", "--branch", colab.BRANCH, colab.REPOSITORY, checkout],
        [sys.executable, "-m", "pip", "install", "--quiet", checkout],
    ]
    assert sys.path[0] == checkout
    # run again in the same session: the clone is there, so only the (quick) install is repeated
    assert run_setup_cell(tmp_path, monkeypatch, in_colab=True) == commands[1:]


def test_outside_colab_the_set_up_cell_does_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path_before = list(sys.path)
    assert run_setup_cell(tmp_path, monkeypatch, in_colab=False) == []
    assert sys.path == path_before and list(tmp_path.iterdir()) == []


def test_the_installed_package_declares_what_helpers_imports() -> None:
    """In Colab the clone is installed with pip from pyproject.toml: its dependencies must cover every
    module that helpers/ imports at the top of a file."""
    import ast
    import importlib.metadata
    import re

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    def normal(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    declared = {normal(re.split(r"[<>=!~ ;\[]", d)[0])
                for d in tomllib.loads((TEMPLATES_DIR.parent / "pyproject.toml").read_text())["project"]["dependencies"]}
    modules = set()
    for path in (TEMPLATES_DIR.parent / "helpers").rglob("*.py"):  # every subpackage
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Import):
                modules |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    third_party = modules - set(sys.stdlib_module_names) - {"helpers", "__future__"}
    distributions = importlib.metadata.packages_distributions()
    needed = {normal(distributions[m][0]) for m in third_party}
    assert needed <= declared, f"add {sorted(needed - declared)} to pyproject.toml's dependencies"
