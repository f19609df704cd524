"""The owner of ``results.json``: its format, and every write and read of it.

The format is the JSON Schema ``helpers/results.schema.json`` (documented key by key, with a
``format_version``). A template saves its section through :func:`save_template_results`, which
refuses a key the schema does not list, so a template cannot invent a key that no reader knows of; a
reader reads through :func:`read`, which refuses a path the schema does not list, so a renamed key
fails where it is read, not three notebooks later. The runner writes the whole file with
:func:`results_file` and :func:`write_json`; :func:`load` reads one back and checks its version.
"""

from __future__ import annotations

import functools
import json
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from helpers import paths
from helpers.errors import SuiteError

SCHEMA_PATH = Path(__file__).with_name("results.schema.json")
FORMAT_VERSION = 1


class ResultsFormatError(SuiteError, ValueError):
    """A results section or file does not follow helpers/results.schema.json; the message names the key."""


@functools.cache
def schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


def _validator(part: dict[str, Any]) -> Any:
    # deferred: jsonschema takes a second to import; only validating a section needs it
    import jsonschema


    # a sub-schema keeps its $refs into the whole document
    return jsonschema.Draft202012Validator({**part, "$defs": schema()["$defs"]})


def _problems(part: dict[str, Any], data: Any) -> list[str]:
    def where(error: Any) -> str:
        return ".".join(str(p) for p in error.absolute_path) or "(top level)"

    def message(error: Any) -> str:
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            listed = error.schema.get("properties", {})
            unknown = [k for k in error.instance if k not in listed and not k.endswith(NULL_REASON_SUFFIX)]
            return f"unknown key(s) {', '.join(map(repr, unknown))} (the schema lists {', '.join(listed)})"
        return error.message

    return [f"{where(e)}: {message(e)}" for e in sorted(_validator(part).iter_errors(data), key=str)]


def check_section(template: str, section: dict[str, Any]) -> None:
    """Raise :class:`ResultsFormatError` unless ``section`` (as JSON) is a valid ``template`` section."""
    if template not in schema()["$defs"] or template not in schema()["properties"]["templates"]["properties"]:
        raise ResultsFormatError(f"results.json has no section for a template named {template!r}. Fix: add its "
                                 f"section to {SCHEMA_PATH.name} (under $defs and templates), describing each key")
    problems = _problems(schema()["$defs"][template], to_jsonable(section))
    if problems:
        raise ResultsFormatError(
            f"template '{template}' saved results that {SCHEMA_PATH.name} does not describe: " + "; ".join(problems[:5])
            + f". Fix: save only the keys its '{template}' section lists, or add the key there with a description "
            "(and teach its readers, through helpers.results.read)")


def check_file(data: dict[str, Any]) -> None:
    """Raise :class:`ResultsFormatError` unless ``data`` is a valid results.json."""
    problems = _problems(schema(), to_jsonable(data))
    if problems:
        raise ResultsFormatError(f"results.json does not follow {SCHEMA_PATH.name}: " + "; ".join(problems[:5]))


def results_file(task: str, templates: dict[str, Any], provenance: dict[str, Any]) -> dict[str, Any]:
    """A whole results.json, checked: every template's section and the provenance."""
    data = {"format_version": FORMAT_VERSION, "task": task, "templates": templates, "provenance": provenance}
    check_file(data)
    return data


def load(path: str | Path) -> dict[str, Any]:
    """Read a results.json strictly (no NaN) and check that this suite knows its format version.

    A file without ``format_version`` was written before the version existed, in version 1's layout.
    """
    def refuse(constant: str) -> None:
        raise ResultsFormatError(f"{path} holds {constant}, which strict JSON has not")

    data = json.loads(Path(path).read_text(encoding="utf-8"), parse_constant=refuse)
    version = data.get("format_version", 1) if isinstance(data, dict) else None
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ResultsFormatError(f"{path} has format_version {version!r}; this suite reads versions up to "
                                 f"{FORMAT_VERSION}. Fix: update the suite (git pull), or run the task again")
    return data


def read(results: dict[str, Any], template: str, *path: str) -> Any:
    """``results["templates"][template][path...]`` of a whole results.json, or None where the file lacks it.

    Raises:
        ResultsFormatError: the schema does not list that path (a reader asking for a key that no
            template writes, e.g. after a rename).
    """
    _schema_node(template, path)
    value: Any = results.get("templates", {}).get(template)
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def read_section(section: dict[str, Any], template: str, *path: str) -> Any:
    """Like :func:`read`, on one template's section (as :func:`load_earlier_results` gives them)."""
    return read({"templates": {template: section}}, template, *path)


def _schema_node(template: str, path: tuple[str, ...]) -> dict[str, Any]:
    defs = schema()["$defs"]
    node = defs.get(template)
    if node is None:
        raise ResultsFormatError(f"results.json has no section {template!r} (see {SCHEMA_PATH.name})")
    for depth, key in enumerate(path):
        while "$ref" in node:
            node = defs[node["$ref"].rsplit("/", 1)[-1]]
        if key not in node.get("properties", {}):
            raise ResultsFormatError(f"{SCHEMA_PATH.name} lists no {'.'.join((template,) + path[:depth + 1])}: "
                                     "a reader asked for a key no template writes. Fix: read a listed key, or list it")
        node = node["properties"][key]
    return node

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


def save_template_results(results_path: str | None, template: str, results: dict[str, Any], summary: list[str]) -> None:
    """Called at the end of a template. ``results_path`` is None when the notebook runs by hand (the
    section is still checked, so a key the schema lacks fails there too).

    Args:
        results_path: where the runner wants this template's numbers.
        template: the template's name, whose section of helpers/results.schema.json they follow.
        results: the template's key figures (result dataclasses are converted with ``to_dict``).
        summary: a few lines the runner prints when the run ends.

    Raises:
        ResultsFormatError: a key the schema does not list, or a listed key missing or of the wrong type.
    """
    section = to_jsonable({"summary": summary, **results})
    check_section(template, section)
    if results_path is None:
        return
    write_json(results_path, section)


CIRCUIT_FILE = "circuit.json"


def circuit_file_path(results_path: str | None, *, task: Any = None) -> Path | None:
    """Where this run's circuit file is (:func:`helpers.analyses.circuits.discovery.write_circuit_file`): beside the
    template's results in a run; by hand (``results_path`` None), ``notebooks/<task>/circuit.json`` of
    the last run when ``task`` is given and it exists; else None."""
    if results_path is not None:
        return Path(results_path).with_name(CIRCUIT_FILE)
    if task is None:
        return None

    last = _last_run_folder(task) / CIRCUIT_FILE
    return last if last.is_file() else None


def _last_run_folder(task: Any) -> Path:
    """By hand: the folder of the last run of ``task`` (a spec) on its model, ``notebooks/<task>@<model>/``
    when that exists, else ``notebooks/<task>/`` (the task file's own model; whichever it is, a reader checks
    the run's settings)."""
    other = paths.NOTEBOOKS_DIR / f"{task.name}{paths.MODEL_SEPARATOR}{paths.model_slug(task.model)}"
    return other if other.is_dir() else paths.NOTEBOOKS_DIR / task.name


def load_earlier_results(results_path: str | None, names: list[str], *, task: Any = None) -> dict[str, Any]:
    """Results of earlier templates, by template name.

    In a run, they are the files the run's earlier templates left beside ``results_path``. By hand
    (``results_path`` is None), they come from ``notebooks/<task>/results.json`` of the last run, but
    only if that run used the same task settings (``task``, a :class:`helpers.tasks.spec.TaskSpec`).
    """
    if results_path is None:
        if task is None:
            return {}

        last = _last_run_folder(task) / "results.json"
        if not last.is_file():
            return {}
        data = load(last)
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
