"""The numbers a template produces, written to JSON for the runner to gather into ``results.json``."""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

# Beside a key whose value was not a finite number (JSON has none), ``<key>_null`` says why it is null.
NULL_REASON_SUFFIX = "_null"


def to_jsonable(value: Any) -> Any:
    """Tensors and tuples become lists, objects with ``to_dict`` become dicts; floats stay floats, except
    NaN and infinities, which strict JSON does not have: they become ``null``, and the dict holding them
    gains ``<key>_null`` with the reason (see :func:`_null_reason`)."""
    if hasattr(value, "to_dict"):
        return to_jsonable(value.to_dict())
    if _is_tensor(value):
        return to_jsonable(value.tolist())
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            converted = to_jsonable(item)
            out[str(key)] = converted
            reason = _null_reason(item)
            if reason is not None:
                out[f"{key}{NULL_REASON_SUFFIX}"] = reason
        return out
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _null_reason(value: Any) -> str | None:
    """Why a value (a number, or numbers inside lists) became null, or None if none did."""
    if _is_tensor(value):
        value = value.tolist()
    found: set[str] = set()

    def visit(item: Any) -> None:
        if isinstance(item, float) and not math.isfinite(item):
            found.add("infinite" if math.isinf(item) else "not a number (undefined: e.g. a correlation of "
                      "values that do not vary, or a ratio to zero)")
        elif isinstance(item, (list, tuple)):
            for inner in item:
                visit(inner)

    visit(value)
    return "; ".join(sorted(found)) if found else None


def _is_tensor(value: Any) -> bool:
    """A torch tensor, without importing torch (a process that made none has not imported it)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def write_json(path: str | Path, data: Any) -> None:
    """Write strict JSON atomically (see :func:`write_text`): no NaN or infinity reaches the file."""
    write_text(path, json.dumps(to_jsonable(data), indent=2, allow_nan=False) + "\n")


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
