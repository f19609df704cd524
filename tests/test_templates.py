"""The contract every template keeps, so the runner can inject a task into any of them."""

from __future__ import annotations

import ast
from pathlib import Path

import nbformat
import papermill as pm
import pytest

from helpers.paths import TEMPLATES_DIR
from helpers.run.cli import CROSS_TASK_TEMPLATES, TEMPLATE_ORDER, available_templates

TEMPLATES = sorted(TEMPLATES_DIR.glob("*.ipynb"))
# What the runner injects into every per-task template (helpers.run.cli.execute), and into the cross-task ones
# (helpers.run.cli.compare).
INJECTED = {"task", "device", "dtype", "results_path"}
INJECTED_CROSS_TASK = {"tasks", "notebooks_dir", "results_path"}


def test_there_are_templates_and_the_runner_orders_them() -> None:
    assert "dla" in available_templates() and "compare" not in available_templates()
    known = [name for name in available_templates() if name in TEMPLATE_ORDER]
    assert known == sorted(known, key=TEMPLATE_ORDER.index)


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.stem)
def test_exactly_one_parameters_cell_declaring_every_injected_key(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    assert tagged[0].cell_type == "code"
    declared = set(pm.inspect_notebook(str(path)))
    injected = INJECTED_CROSS_TASK if path.stem in CROSS_TASK_TEMPLATES else INJECTED
    assert injected <= declared, f"{path.name} does not declare {injected - declared}"


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.stem)
def test_committed_without_outputs(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:80]


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.stem)
def test_templates_hold_no_logic_of_their_own(path: Path) -> None:
    """A function or class a template needs belongs in helpers/, where it is tested."""
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        tree = ast.parse(cell.source)
        defined = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda))]
        assert not defined, f"{path.name}: move this out of the template: {cell.source[:80]}"
        assert ".cuda()" not in cell.source


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.stem)
def test_every_section_has_how_it_works_and_how_to_interpret(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    sections = [c.source for c in nb.cells if c.cell_type == "markdown" and c.source.startswith("## ")]
    analyses = [s for s in sections if not s.startswith("## Results")]
    assert analyses
    for source in analyses:
        assert "**How it works.**" in source, source[:60]
    interpret = [c for c in nb.cells if c.cell_type == "markdown" and "**How to interpret.**" in c.source]
    assert len(interpret) == len(analyses)
