"""The contract every template keeps, so the runner can inject a task into any of them."""

from __future__ import annotations

import ast
from pathlib import Path

import nbformat
import papermill as pm
import pytest

from helpers.paths import REPO_ROOT, TEMPLATES_DIR
from helpers.run.kernel import TEMPLATE_MODULES
from helpers.run.plan import CROSS_TASK_TEMPLATES, TEMPLATE_ORDER, available_templates

TEMPLATES = sorted(TEMPLATES_DIR.glob("*.ipynb"))
# What the runner injects into every per-task template (helpers.run.execute.execute), and into the cross-task
# ones (helpers.run.comparison.compare).
INJECTED = {"task", "device", "dtype", "results_path"}
INJECTED_CROSS_TASK = {"compare": {"tasks", "notebooks_dir", "model", "results_path"},  # helpers.run.comparison.compare
                       "sweep": {"folders", "results_path"}}  # helpers.run.sweep.compare_sweep


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
    injected = INJECTED_CROSS_TASK[path.stem] if path.stem in CROSS_TASK_TEMPLATES else INJECTED
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


def is_module(name: str) -> bool:
    path = REPO_ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def helpers_modules_imported(path: Path) -> set[str]:
    """Every helpers module a template's code imports (``from helpers.a import b`` counts ``helpers.a.b``
    where ``b`` is a module, else ``helpers.a``)."""
    found = set()
    for cell in nbformat.read(path, as_version=4).cells:
        if cell.cell_type != "code":
            continue
        for node in ast.walk(ast.parse(cell.source)):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("helpers"):
                for alias in node.names:
                    name = f"{node.module}.{alias.name}"
                    found.add(name if is_module(name) else node.module)
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("helpers")}
    return found


def test_the_kernel_warm_up_imports_every_module_a_template_imports() -> None:
    """The warm-up (helpers.run.kernel.TEMPLATE_MODULES) imports what the templates will, before the first
    one runs: a module missing from it is imported inside a template's timed cells instead."""
    imported = set().union(*(helpers_modules_imported(path) for path in TEMPLATES))
    assert "helpers.figures.dla" in imported and "helpers.notebook.reports" in imported
    assert imported <= set(TEMPLATE_MODULES), f"not warmed up: {sorted(imported - set(TEMPLATE_MODULES))}"
