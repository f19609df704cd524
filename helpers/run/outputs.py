"""A task's output folder, ``notebooks/<task>/``: its name, who may write it, and how a run lands in it.

Rules every command follows (``run``, ``sweep``, ``html``, ``lab``, ``compare``):

- A folder is named by a task name (lowercase letters, digits, ``_`` and ``-``), never by a path, so
  nothing is written outside ``notebooks/``; a task file given by path lands in its ``name``'s folder.
  ``compare``, ``sweep``, ``failed`` and ``earlier`` are reserved (:data:`helpers.tasks.spec.RESERVED_TASK_NAMES`).
- One folder per task and model: a run on the task file's own model writes ``notebooks/<task>/``, a run on
  another model (``MODEL=``) ``notebooks/<task>@<model>/`` (:func:`helpers.paths.run_folder_name`), so runs
  of one task on several models sit side by side.
- One run at a time writes a folder: :class:`RunLock` refuses a second, naming the first's process.
- A run lands only when every template succeeded, and the folder then describes one set of task
  settings (the task, its prompts, the model and dtype). A partial run (``TEMPLATES=``) with the same
  settings merges its templates into the folder: their notebooks, pages and ``results.json`` sections
  are replaced, the others kept, and ``provenance.template_runs`` says when each template ran. A run with
  other settings first moves every earlier output to ``earlier/<when it ran>/``, so nothing is lost and
  nothing stale is listed beside the new results.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import socket
from pathlib import Path
from types import TracebackType
from typing import Any

from helpers.errors import RunLockedError
from helpers.paths import MODEL_SEPARATOR, model_slug, run_folder_name
from helpers.results import CIRCUIT_FILE, FORMAT_VERSION, results_file, write_json
from helpers.tasks.spec import RESERVED_TASK_NAMES, TASK_NAME_RE, load_task, resolve_task_path

LOCK_NAME = ".run.lock"
EARLIER = "earlier"
# What must match for a run's templates to be merged with the folder's earlier ones.
SETTINGS = ("task", "model", "dtype")


def output_name(task: str, model: str | None = None) -> str:
    """The output folder's name for ``task``: a task name as it is (also ``compare``), or the ``name``
    of the task file a path points to; with ``model``, the folder of that task's run on it
    (:func:`helpers.paths.run_folder_name`). A folder's own name (``ioi@EleutherAI--pythia-160m``) is
    taken as it is.

    Raises:
        TaskError: anything else (a path outside the rules, a name no folder could have).
    """
    text = str(task).strip()
    name, _, slug = text.partition(MODEL_SEPARATOR)
    if slug and TASK_NAME_RE.match(name) and re.fullmatch(r"[A-Za-z0-9._-]+", slug):
        return text
    if model is not None and text in ("compare", "sweep"):
        return f"{text}{MODEL_SEPARATOR}{model_slug(model)}"
    if model is not None:
        spec = load_task(resolve_task_path(text))
        return run_folder_name(spec.name, model, spec.model)
    if text == "compare" or (TASK_NAME_RE.match(text) and text not in RESERVED_TASK_NAMES):
        return text
    return load_task(resolve_task_path(text)).name


class RunLock:
    """Held while a run writes ``folder``: a file naming this process, created exclusively. A lock left by
    a process that no longer runs (on this machine) is taken over."""

    def __init__(self, folder: Path):
        self.path = folder / LOCK_NAME
        self.held = False

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        record = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                other = self._read()
                if other is not None and _alive(other):
                    raise RunLockedError(
                        f"another run (process {other.get('pid')} on {other.get('host')}, started "
                        f"{other.get('started')}) is writing {self.path.parent}. Fix: wait for it to finish, or "
                        f"stop it; if no such run exists, delete {self.path}.") from None
                self.path.unlink(missing_ok=True)  # left by a run that ended without cleaning up
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(record, handle)
            self.held = True
            return
        raise RunLockedError(f"could not take the lock {self.path}. Fix: delete it if no run is writing there.")

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def _read(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.release()


def _alive(record: dict[str, Any]) -> bool:
    if record.get("host") != socket.gethostname():
        return True  # another machine's run (a shared folder): assume it is running
    try:
        os.kill(int(record["pid"]), 0)
    except (ProcessLookupError, ValueError, KeyError, TypeError):
        return False
    except PermissionError:
        return True
    return True


def settings_of(results: dict[str, Any]) -> dict[str, Any]:
    provenance = results.get("provenance", {})
    return {key: provenance.get(key) for key in SETTINGS}


def land(staging: Path, output_dir: Path, names: list[str], results: dict[str, Any], *,
         log: Any = print, seconds: dict[str, float] | None = None,
         not_applicable: dict[str, str] | None = None) -> dict[str, Any]:
    """Move a successful run's notebooks, pages and results from ``staging`` into ``output_dir`` (see the
    module docstring); returns the ``results.json`` written there. ``seconds``: how long the command line
    waited for each template, kept in ``template_runs`` for the next run's estimate of what remains.
    ``not_applicable``: templates among ``names`` that do not apply here, with why (their notebooks land,
    they have no section; an earlier section of theirs is not kept)."""

    previous = previous_results(output_dir)
    not_applicable = not_applicable or {}
    run_of = {name: {"finished_at": results["provenance"]["finished_at"],
                     "suite_commit": results["provenance"].get("suite_commit"),
                     **({"seconds": round(seconds[name], 1)} if seconds and name in seconds else {}),
                     **({"not_applicable": not_applicable[name]} if name in not_applicable else {})} for name in names}
    if previous is not None and same_settings(previous, results["provenance"]):
        earlier_runs = previous.get("provenance", {}).get("template_runs", {})
        kept = {name: data for name, data in previous.get("templates", {}).items() if name not in names}
        results = {**results, "templates": {**kept, **results["templates"]}}
        results["provenance"] = {**results["provenance"], "template_runs": {
            **{name: earlier_runs.get(name, {"finished_at": previous["provenance"].get("finished_at")}) for name in kept},
            **run_of}}
    else:
        if previous is not None or any(output_dir.glob("*.ipynb")):
            moved = move_earlier(output_dir, previous)
            log(f"The earlier results in {output_dir} came from other settings; they are kept in {moved}")
        results = {**results, "provenance": {**results["provenance"], "template_runs": run_of}}
    for name in names:
        os.replace(staging / f"{name}.ipynb", output_dir / f"{name}.ipynb")
        os.replace(staging / f"{name}.html", output_dir / f"{name}.html")
    if (staging / CIRCUIT_FILE).is_file():  # written by circuit_discovery (a partial run without it keeps the old)
        os.replace(staging / CIRCUIT_FILE, output_dir / CIRCUIT_FILE)
    results = results_file(results["task"], results["templates"], results["provenance"])
    write_json(output_dir / "results.json", results)
    shutil.rmtree(output_dir / "failed", ignore_errors=True)
    return results


def previous_results(output_dir: Path) -> dict[str, Any] | None:
    """The ``results.json`` in ``output_dir``, or None if there is none."""
    path = output_dir / "results.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def same_settings(previous: dict[str, Any], provenance: dict[str, Any]) -> bool:
    """Whether results written earlier (``previous``) came from a run with the settings of ``provenance``
    (:data:`SETTINGS`) and in this suite's results format: a partial run merges into them only then."""

    return settings_of(previous) == settings_of({"provenance": provenance}) \
        and previous.get("format_version") == FORMAT_VERSION


def earlier_seconds(output_dir: Path, provenance: dict[str, Any]) -> dict[str, float]:
    """How long each template took in the run whose results are in ``output_dir``, if it ran with the
    settings of ``provenance`` (:func:`same_settings`) and on the same device; empty otherwise, or if it
    did not record it."""
    try:
        previous = previous_results(output_dir)
    except (OSError, ValueError):
        return {}
    if not isinstance(previous, dict) or not same_settings(previous, provenance) \
            or previous.get("provenance", {}).get("device") != provenance.get("device"):
        return {}
    runs = previous["provenance"].get("template_runs") or {}
    return {name: float(run["seconds"]) for name, run in runs.items()
            if isinstance(run, dict) and isinstance(run.get("seconds"), (int, float))}


def move_earlier(output_dir: Path, previous: dict[str, Any] | None) -> Path:
    """Move the folder's outputs (not its failed notebooks or earlier runs) into ``earlier/<when>/``."""
    when = (previous or {}).get("provenance", {}).get("finished_at") or dt.datetime.now(dt.timezone.utc).isoformat(
        timespec="seconds")
    target = output_dir / EARLIER / when.replace(":", "-")
    target.mkdir(parents=True, exist_ok=True)
    for path in output_dir.iterdir():
        if path.is_file() and path.suffix in (".ipynb", ".html", ".json", ".md"):
            os.replace(path, target / path.name)
    return target
