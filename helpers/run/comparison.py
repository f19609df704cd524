"""The comparisons: ``templates/compare.ipynb`` executed on several tasks' results into
``notebooks/compare/`` (``notebooks/compare@<model>/`` for their runs on another model), running first any
task whose results are missing; and :func:`run_comparison`, which lands any cross-run template's notebook
(the sweep's, :mod:`helpers.run.sweep`, too).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

# Only light modules here: a bad task file or argument is reported before torch, transformers and
# nbformat are imported (seconds); the rest is imported where it is used.
from helpers.paths import NOTEBOOKS_DIR
from helpers.results import results_file, write_json
from helpers.run.execute import finish_notebooks, git_commit, now, report_failure, run_tasks, run_template, shown
from helpers.run.outputs import RunLock, output_name
from helpers.run.plan import COMPARED_TEMPLATES, model_argument, template_path
from helpers.tasks.spec import TaskError, resolve_task_path


def missing_for_comparison(tasks: list[str], *, notebooks_dir: Path = NOTEBOOKS_DIR, model: str | None = None) -> list[str]:
    """The tasks whose ``results.json`` is absent, lacks a template the comparison reads, or (when
    ``model`` is given) came from another model."""
    missing = []
    for task in tasks:
        path = notebooks_dir / output_name(task, model) / "results.json"
        data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        has_all = set(COMPARED_TEMPLATES) <= set(data.get("templates", {}))
        if not has_all or (model is not None and data.get("provenance", {}).get("model") != model_argument(model)):
            missing.append(task)
    return missing


def compare(tasks: list[str], *, run_missing: bool = True, log: Any = print,
            notebooks_dir: Path = NOTEBOOKS_DIR, **options: Any) -> int:
    """Execute ``templates/compare.ipynb`` on the tasks' results into ``notebooks/compare/``.

    Tasks without usable results are run first (``run_missing``), or named with the command to run.
    """

    if len(tasks) < 2:
        print(f"error: TASKS = {' '.join(tasks)!r}: a comparison needs at least two tasks. "
              "Fix: e.g. make compare TASKS=\"numseq months\"", file=sys.stderr)
        return 2
    for task in tasks:
        try:
            resolve_task_path(task)
        except TaskError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    missing = missing_for_comparison(tasks, notebooks_dir=notebooks_dir, model=options.get("model"))
    if missing and not run_missing:
        print(f"error: no usable results for {', '.join(missing)}. Fix: make run TASK=\"{' '.join(missing)}\"",
              file=sys.stderr)
        return 2
    if missing:
        log(f"Running first the tasks without results: {', '.join(missing)}")
        run_tasks(missing, log=log, notebooks_dir=notebooks_dir, **options)
        still = missing_for_comparison(tasks, notebooks_dir=notebooks_dir, model=options.get("model"))
        if still:
            print(f"error: {', '.join(still)} did not produce results; the comparison needs them", file=sys.stderr)
            return 1
    model = options.get("model")
    log(f"compare: {', '.join(tasks)}" + (f" on {model}" if model else "") + " ...")
    return run_comparison("compare", notebooks_dir / output_name("compare", model), {
        "tasks": list(tasks), "notebooks_dir": str(notebooks_dir.resolve()),
        "model": None if model is None else model_argument(model)}, log=log, provenance={"tasks": list(tasks)})


def run_comparison(template: str, output_dir: Path, parameters: dict[str, Any], *, log: Any = print,
                   provenance: dict[str, Any] | None = None) -> int:
    """Execute the cross-run ``template`` with ``parameters`` into ``output_dir``: its notebook, page and
    ``results.json`` (the template's section under its name, and ``provenance`` with when and by which
    commit) replace the previous ones only once it succeeded; a failure keeps its notebook in ``failed/``."""
    output_dir.mkdir(parents=True, exist_ok=True)
    with RunLock(output_dir):
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=output_dir))
        try:
            notebook = staging / f"{template}.ipynb"
            failure = run_template(template_path(template), notebook, {
                **parameters, "results_path": f"{template}.results.json"})
            if failure is not None:
                return report_failure(output_dir, template, notebook, failure, log)
            section = json.loads((staging / f"{template}.results.json").read_text())
            results = results_file(template, {template: section}, {
                **(provenance or {}), "finished_at": now(), "suite_commit": git_commit()})
            write_json(staging / "results.json", results)
            finish_notebooks(staging, [template])
            _publish(staging, output_dir, [template])
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    for line in section.get("summary", []):
        log(f"  {line}")
    log(f"The comparison is in {shown(output_dir)}/: {template}.ipynb, {template}.html (offline page), results.json")
    return 0


def _publish(staging: Path, output_dir: Path, names: list[str]) -> None:
    """Move the comparison's notebook, page and results into place; only now are the previous ones
    replaced (a task's run lands through :func:`helpers.run.outputs.land`)."""
    for name in names:
        os.replace(staging / f"{name}.ipynb", output_dir / f"{name}.ipynb")
        os.replace(staging / f"{name}.html", output_dir / f"{name}.html")
    os.replace(staging / "results.json", output_dir / "results.json")
    shutil.rmtree(output_dir / "failed", ignore_errors=True)
