"""Executing a :class:`~helpers.run.plan.RunPlan`: each template in the run's kernel into a staging folder,
the notebooks finished (static images, signature, offline page) while the next one runs, the estimate of
what is left, and, only when every template succeeded, the results landed in ``notebooks/<task>/``
(:func:`helpers.run.outputs.land`). A failure keeps the failed notebook at ``notebooks/<task>/failed/``
and leaves the previous results untouched.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Only light modules here: a bad task file or argument is reported before torch, transformers and
# nbformat are imported (seconds); the rest is imported where it is used.
from helpers.errors import ModelLoadError, NotApplicable, RunLockedError
from helpers.paths import NOTEBOOKS_DIR, REPO_ROOT
from helpers.run.kernel import TemplateKernel, execute_template
from helpers.run.outputs import RunLock, earlier_seconds, land
from helpers.run.plan import RunPlan, loads_model, prepare_run
from helpers.tasks.spec import TaskError, TaskSpec

PACKAGES = ("torch", "transformer-lens", "transformers", "papermill", "circuitsvis", "plotly", "numpy")


def execute(plan: RunPlan, *, log: Any = print, fresh_kernels: bool = False, kernel: TemplateKernel | None = None) -> int:
    """Execute the plan's templates; returns the process exit code (0 on success).

    The templates run one after another in one kernel (:class:`helpers.run.kernel.TemplateKernel`): ``kernel``,
    one the caller started (and closes), or else one started and warmed up here; or each in a kernel of
    its own with ``fresh_kernels``.
    """
    plan.output_dir.mkdir(parents=True, exist_ok=True)
    with RunLock(plan.output_dir):
        return _execute_locked(plan, log, fresh_kernels, kernel)


@dataclass
class KernelWarmer:
    """:func:`prepare_run`'s ``when_checked`` for one task's run: once the task is checked, it starts the
    run's kernel and, when a template loads the model, its warm-up (:meth:`TemplateKernel.warm_up`), so
    the model converts while the tokenizer loads and the prompts are checked. Nothing with ``fresh``
    kernels. :meth:`close` stops the kernel."""

    device: str = "auto"
    dtype: str = "float32"
    fresh: bool = False
    kernel: TemplateKernel | None = None

    def __call__(self, spec: TaskSpec, templates: list[str]) -> None:
        if self.fresh or self.kernel is not None:
            return
        self.kernel = TemplateKernel()
        if loads_model(templates):
            self.kernel.warm_up(spec.model, device=self.device, dtype=self.dtype)

    def close(self) -> None:
        if self.kernel is not None:
            self.kernel.close()
            self.kernel = None


def _execute_locked(plan: RunPlan, log: Any, fresh_kernels: bool, given: TemplateKernel | None) -> int:
    # deferred: the command line reports a bad task before importing torch, transformers or Jupyter's libraries
    from helpers.figures.images import add_static_images

    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=plan.output_dir))
    results: dict[str, Any] = {}
    not_applicable: dict[str, str] = {}  # template -> why it does not apply (its notebook lands, without results)
    # a caller that did not start the kernel (and its warm-up) from prepare_run gets it here
    own = KernelWarmer(plan.device, plan.dtype, fresh=fresh_kernels or given is not None)
    # each executed notebook gets its figures' PNGs and its page there, while the kernel runs the next template
    finishing = NotebookFinisher()
    finished = []
    took: dict[str, float] = {}  # each template's time, in the order they ran
    provenance = _provenance(plan)  # the run's settings (its finishing time is set when it lands)
    before = earlier_seconds(plan.output_dir, provenance)  # the last run's times, for the estimate
    completed = False
    try:
        own(plan.spec, [t.stem for t in plan.templates])
        kernel = given or own.kernel
        for i, template in enumerate(plan.templates, start=1):
            name = template.stem
            log(f"[{i}/{len(plan.templates)}] {name}: running on {plan.spec.model} ...")
            started = time.perf_counter()
            notebook = staging / f"{name}.ipynb"
            failure = run_template(template, notebook, {
                "task": plan.spec.to_dict(), "device": plan.device, "dtype": plan.dtype,
                "results_path": f"{name}.results.json"}, kernel)
            if failure is not None and failure.not_applicable is None:
                if notebook.is_file():
                    add_static_images(notebook)
                return report_failure(plan.output_dir, name, notebook, failure, log)
            finished.append(finishing.submit(staging, [name]))
            took[name] = time.perf_counter() - started
            left = remaining_estimate(took, [t.stem for t in plan.templates[i:]], before)
            if failure is not None:  # the notebook says why, in place of its results; the others run
                not_applicable[name] = str(failure.not_applicable)
                log(f"[{i}/{len(plan.templates)}] {name}: not applicable to this model or task: "
                    f"{failure.not_applicable}" + (f"; {left}" if left else ""))
                continue
            results[name] = json.loads((staging / f"{name}.results.json").read_text())
            log(f"[{i}/{len(plan.templates)}] {name}: done in {took[name]:.1f} s" + (f"; {left}" if left else ""))
        names = [t.stem for t in plan.templates]
        if not all(job.done() for job in finished):
            log(f"Finishing the offline HTML pages ({sum(job.done() for job in finished)} of {len(names)} written) ...")
        for job in finished:
            job.result()
        heavy = over_size_budget(staging, names)
        if heavy:
            log(f"Warning: {', '.join(heavy)} weigh more than {SIZE_BUDGET_BYTES // 2**20} MB: GitHub may not show "
                "them. Fix: fewer prompts in the attention views (the templates' parameters), or fewer layers shown")
        land(staging, plan.output_dir, names, {"task": plan.spec.name, "templates": results,
                                               "provenance": {**provenance, "finished_at": now()}}, log=log,
             seconds=took, not_applicable=not_applicable)
        # deferred: the command line reports a bad task before importing torch, transformers or Jupyter's libraries
        from helpers.run.export import write_index

        write_index(plan.output_dir)
        completed = True
    finally:
        try:
            finishing.close(wait=completed)
            own.close()
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    _summarise(plan, results, not_applicable, log)
    return 0


@dataclass(frozen=True)
class TemplateFailure:
    """Why a template did not produce its results: what happened, and the cell it happened in."""

    problem: str
    source: str = ""
    not_applicable: str | None = None  # the reason, where the template raised helpers.errors.NotApplicable


def run_template(template: Path, notebook: Path, parameters: dict[str, Any],
                  kernel: TemplateKernel | None = None) -> TemplateFailure | None:
    """Execute one template (in ``kernel``, or a fresh one); None when it ran to the end and wrote its
    results, else what went wrong."""
    # deferred: the command line reports a bad task before importing torch, transformers or Jupyter's libraries
    import papermill as pm
    from nbclient.exceptions import DeadKernelError

    try:
        if kernel is None:
            execute_template(template, notebook, parameters)
        else:
            kernel.run(template, notebook, parameters)
    except pm.PapermillExecutionError as err:
        return TemplateFailure(f"stopped in cell [{err.exec_count}] with {err.ename}: {err.evalue}", str(err.source or ""),
                               not_applicable=err.evalue if err.ename == NotApplicable.__name__ else None)
    except DeadKernelError as err:
        return TemplateFailure(f"its kernel died ({str(err).strip().splitlines()[0] if str(err).strip() else 'no reason given'}); "
                               "out of memory, or a crash in native code, are the usual causes")
    written = notebook.parent / parameters["results_path"]
    if not written.is_file():
        return TemplateFailure(f"ran to the end but wrote no results ({written.name}); its last cell must call "
                               "helpers.results.save_template_results(results_path, ...)")
    try:
        json.loads(written.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        return TemplateFailure(f"wrote results that are not JSON ({written.name}: {err})")
    return None


# The most a notebook or page may weigh: GitHub renders notebooks up to about 10 MB, and a page that
# size still goes by e-mail.
SIZE_BUDGET_BYTES = 10 * 1024 * 1024


def over_size_budget(folder: Path, names: list[str]) -> list[str]:
    """The notebooks and pages in ``folder`` heavier than :data:`SIZE_BUDGET_BYTES`, with their sizes."""
    found = []
    for name in names:
        for path in (folder / f"{name}.ipynb", folder / f"{name}.html"):
            if path.is_file() and path.stat().st_size > SIZE_BUDGET_BYTES:
                found.append(f"{path.name} ({path.stat().st_size / 2**20:.1f} MB)")
    return found


def remaining_estimate(took: dict[str, float], left: list[str], before: dict[str, float] | None = None) -> str | None:
    """What the command line says remains after a template: ``took`` holds the times of the templates run
    so far (in the order they ran), ``left`` the names still to run; None when nothing is left or there is
    no basis.

    With ``before``, the times of the last run with the same settings (:func:`helpers.run.outputs.earlier_seconds`),
    and a time there for every template left: their sum, scaled by how this run compares with that one on
    the templates done after the first (the first also waits for the model to load). The templates' own
    times differ a hundredfold (GPT-2 small: 4 s to 250 s), so that is the estimate worth having. Otherwise,
    the mean time of the templates run so far, the first left out, times the number left."""
    if not left:
        return None
    after_first = list(took.items())[1:]
    if before and all(name in before for name in left):
        pairs = [(now, before[name]) for name, now in after_first if before.get(name)]
        scale = sum(now for now, _ in pairs) / sum(then for _, then in pairs) if pairs else 1.0
        then = sum(before[name] for name in left)
        return (f"about {scale * then:.0f} s left for {len(left)} more (the last run with these settings took "
                f"{then:.0f} s for them)")
    if not after_first:
        return None
    mean = sum(now for _, now in after_first) / len(after_first)
    return f"about {mean * len(left):.0f} s left for {len(left)} more (at {mean:.1f} s each so far)"


class NotebookFinisher:
    """The worker that finishes each executed notebook (:func:`finish_notebooks`) while the kernel runs the
    next template: a thread at the lowest priority (Linux, where a thread has one of its own), so it runs
    on what the kernel leaves idle, with the kernel's torch threads sleeping when idle
    (:func:`helpers.run.kernel.kernel_environment`). Measured on the demo's whole run (2 cores): 51.0 s so, 52.5 s
    with torch's threads spinning, 58.5 s with the thread at the normal priority as well (and each figure
    shown twice drawn twice).

    A process of its own was faster (44.9 s: a thread drawing images holds the command line's interpreter
    lock, which its thread talking to the kernel waits for), but a spawned process imports the caller's main
    module again, which runs a script without a ``__main__`` guard a second time, and one stopped by
    Ctrl-C mid-run kept the command line waiting in the test suite (not understood).
    """

    def __init__(self) -> None:

        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="finish-notebooks",
                                        initializer=_lowest_priority)

    def submit(self, folder: Path, names: list[str]) -> Any:
        """Finish ``names`` in ``folder``; a future of it."""
        return self._pool.submit(finish_notebooks, folder, names)

    def close(self, *, wait: bool) -> None:
        """Stop the worker once what it is doing is done; with ``wait``, once everything submitted is."""
        self._pool.shutdown(wait=True, cancel_futures=not wait)


def _lowest_priority() -> None:
    if sys.platform.startswith("linux"):

        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except OSError:
            pass


def finish_notebooks(folder: Path, names: list[str]) -> None:
    """Give the executed notebooks' figures their static PNGs, record the kernel as this environment's
    Jupyter names it (so JupyterLab opens the notebook unmodified), trust the notebooks (this user's
    Jupyter then runs their attention views' scripts, as it would for a notebook run by hand) and export
    each as an offline HTML page beside it."""
    # deferred: the command line reports a bad task before importing torch, transformers or Jupyter's libraries
    import nbformat
    from nbformat.sign import NotebookNotary

    # deferred: the command line reports a bad task before importing torch, transformers or Jupyter's libraries
    from helpers.figures.images import static_images_into
    from helpers.run.export import export_notebook
    from helpers.run.kernel import kernelspec_metadata

    notary = NotebookNotary()
    kernelspec = kernelspec_metadata()
    for name in names:
        path = folder / f"{name}.ipynb"
        notebook = nbformat.read(path, as_version=4)
        changed = static_images_into(notebook) > 0
        if notebook.metadata.get("kernelspec") != kernelspec:
            notebook.metadata["kernelspec"] = kernelspec
            changed = True
        if changed:
            nbformat.write(notebook, path)
        notary.sign(notebook)
        export_notebook(path)  # from the file as written (its keys sorted), as `make html` exports it again


def report_failure(output_dir: Path, name: str, notebook: Path, failure: TemplateFailure, log: Any) -> int:
    failed_dir = output_dir / "failed"
    failed_dir.mkdir(exist_ok=True)
    kept = failed_dir / f"{name}.ipynb"
    if notebook.exists():
        os.replace(notebook, kept)
    source = "\n".join("      " + line for line in failure.source.splitlines()[:8])
    log(
        f"FAILED: template '{name}' {failure.problem}\n"
        + (f"  cell source:\n{source}\n" if source else "")
        + (f"  The failed notebook is kept for inspection at {shown(kept)}\n" if kept.exists() else "")
        + f"  The previous results in {shown(output_dir)} are untouched."
    )
    return 1


def _summarise(plan: RunPlan, results: dict[str, Any], not_applicable: dict[str, str], log: Any) -> None:
    log(f"\nTask '{plan.spec.name}' on {plan.spec.model}, {plan.n_prompts_built} prompts:")
    for name, data in results.items():
        for line in data.get("summary", []):
            log(f"  {name}: {line}")
    for name, reason in not_applicable.items():
        log(f"  {name}: not applicable: {reason}")
    log(f"Written to {shown(plan.output_dir)}/: {len(results) + len(not_applicable)} executed notebooks (.ipynb), their offline pages (.html), "
        f"results.json, and index.html / README.md listing them. Open them with: make lab TASK={plan.spec.name}")


def shown(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _provenance(plan: RunPlan) -> dict[str, Any]:
    """What the run was asked and ran with; ``finished_at`` is added when it lands."""
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    versions["python"] = platform.python_version()
    return {
        "task_file": str(plan.task_file),
        "task_file_contents": plan.task_text,
        "task": plan.spec.to_dict(),
        "model": plan.spec.model,
        "seed": plan.spec.seed,
        "n_prompts": plan.n_prompts_built,
        "device": plan.device,
        "dtype": plan.dtype,
        "templates": [t.stem for t in plan.templates],
        "suite_commit": git_commit(),
        "packages": versions,
    }


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def run_tasks(tasks: list[str], *, log: Any = print, notebooks_dir: Path = NOTEBOOKS_DIR, fresh_kernels: bool = False,
              **options: Any) -> int:
    """Validate and run each task in turn (``options`` as for :func:`prepare_run`). A task that fails,
    in validation or in a template, is reported and the others still run.

    Returns:
        0 if every task succeeded; for one task, 2 if it was invalid and 1 if a template failed; for
        several, 1 if any failed.
    """
    outcomes: dict[str, str] = {}
    code = 0
    for i, task in enumerate(tasks, start=1):
        if len(tasks) > 1:
            log(f"\n=== task {i}/{len(tasks)}: {task} ===")
        warmer = KernelWarmer(options.get("device", "auto"), options.get("dtype", "float32"), fresh=fresh_kernels)
        try:
            try:
                plan = prepare_run(task, notebooks_dir=notebooks_dir, when_checked=warmer, **options)
            except (TaskError, ModelLoadError, ValueError) as err:
                print(f"error: {err}", file=sys.stderr)
                outcomes[task], code = "invalid: " + str(err).splitlines()[0], code or 2
                continue
            try:
                ran = execute(plan, log=log, fresh_kernels=fresh_kernels, kernel=warmer.kernel)
            except RunLockedError as err:
                print(f"error: {err}", file=sys.stderr)
                outcomes[task], code = "refused: another run is writing its folder", code or 2
                continue
        finally:
            warmer.close()
        if ran == 0:
            outcomes[task] = f"ok -> {shown(plan.output_dir)}/"
        else:
            outcomes[task], code = f"failed (kept in {shown(plan.output_dir / 'failed')}/)", 1
    if len(tasks) > 1:
        failed = [t for t, outcome in outcomes.items() if not outcome.startswith("ok")]
        log(f"\n{len(tasks) - len(failed)} of {len(tasks)} tasks succeeded" + (f"; failed: {', '.join(failed)}" if failed else ""))
        for task, outcome in outcomes.items():
            log(f"  {task:<16} {outcome}")
        return 1 if failed else 0
    return code
