"""The numbers a template produces, written to JSON for the runner to gather into ``results.json``."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def to_jsonable(value: Any) -> Any:
    """Tensors and tuples become lists, objects with ``to_dict`` become dicts; floats stay floats."""
    if hasattr(value, "to_dict"):
        return to_jsonable(value.to_dict())
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    return value


def write_json(path: str | Path, data: Any) -> None:
    """Write JSON atomically (see :func:`write_text`)."""
    write_text(path, json.dumps(to_jsonable(data), indent=2, allow_nan=True) + "\n")


def write_text(path: str | Path, text: str) -> None:
    """Write a file atomically: a reader (or a crash) never sees a half-written file, and a failure
    leaves the previous file as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(tmp, 0o644)  # mkstemp creates files readable by their owner only
    os.replace(tmp, path)


def save_template_results(results_path: str | None, results: dict[str, Any], summary: list[str]) -> None:
    """Called at the end of a template. ``results_path`` is None when the notebook runs by hand.

    Args:
        results_path: where the runner wants this template's numbers.
        results: the template's key figures (result dataclasses are converted with ``to_dict``).
        summary: a few lines the runner prints when the run ends.
    """
    if results_path is None:
        return
    write_json(results_path, {"summary": summary, **results})


def load_earlier_results(results_path: str | None, names: list[str], *, task: Any = None) -> dict[str, Any]:
    """Results of earlier templates, by template name.

    In a run, they are the files the run's earlier templates left beside ``results_path``. By hand
    (``results_path`` is None), they come from ``notebooks/<task>/results.json`` of the last run, but
    only if that run used the same task settings (``task``, a :class:`helpers.tasks.TaskSpec`).
    """
    if results_path is None:
        if task is None:
            return {}
        from helpers.paths import NOTEBOOKS_DIR

        last = NOTEBOOKS_DIR / task.name / "results.json"
        if not last.is_file():
            return {}
        data = json.loads(last.read_text(encoding="utf-8"))
        if data.get("provenance", {}).get("task") != to_jsonable(task.to_dict()):
            return {}
        return {name: data["templates"][name] for name in names if name in data.get("templates", {})}
    folder = Path(results_path).parent
    found = {}
    for name in names:
        path = folder / f"{name}.results.json"
        if path.is_file():
            found[name] = json.loads(path.read_text(encoding="utf-8"))
    return found
