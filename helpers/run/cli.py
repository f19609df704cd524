"""Run every template of the suite on tasks: ``python -m helpers.run --task ioi`` (``make run``).

``--task numseq months`` runs several tasks one after another, ``--all`` every task in ``params/``;
a task that fails is reported and the others still run. ``--compare numseq months`` executes the
cross-task comparison (``templates/compare.ipynb``) into ``notebooks/compare/``, running first any
task whose results are missing. ``--html ioi`` re-exports a task's pages without running anything.

For each task:

1. Validate the task file, then load only the model's tokenizer and build the prompts, so a bad task
   fails in seconds, before any model runs.
2. Execute each template with papermill into a staging folder, injecting the validated task.
3. Only when every template succeeded, sign each executed notebook (trusted by this user's Jupyter),
   export it as an offline HTML page (:mod:`helpers.run.export`), then move the notebooks, pages and
   ``results.json`` into ``notebooks/<task>/`` and write its ``index.html`` and ``README.md``. A
   failure keeps the failed notebook at ``notebooks/<task>/failed/`` and leaves the previous good
   results of that task untouched.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Only light modules here: a bad task file or argument is reported before torch, transformers and
# nbformat are imported (seconds); the rest is imported where it is used.
from helpers.errors import ModelLoadError, RunLockedError
from helpers.paths import NOTEBOOKS_DIR, REPO_ROOT, TEMPLATES_DIR
from helpers.results import results_file, write_json
from helpers.run.kernel import TemplateKernel, execute_template
from helpers.run.outputs import RunLock, earlier_seconds, land, output_name
from helpers.tasks.spec import TaskError, TaskSpec, available_tasks, load_task, resolve_task_path

# Templates run in this order (later ones read the earlier ones' results); others follow by name.
TEMPLATE_ORDER = ("dla", "patching", "head_functions", "copy_scores", "circuit_discovery", "circuit", "mlp_neurons",
                  "vector_arithmetic")
# Templates that read several tasks' results instead of running on one task.
CROSS_TASK_TEMPLATES = ("compare",)
# What the comparison reads from each task's results.json.
COMPARED_TEMPLATES = ("dla", "patching", "head_functions", "copy_scores")
PACKAGES = ("torch", "transformer-lens", "transformers", "papermill", "circuitsvis", "plotly", "numpy")


@dataclass(frozen=True)
class RunPlan:
    """Everything a run needs, settled and validated before any template executes."""

    spec: TaskSpec
    task_file: Path
    task_text: str
    templates: tuple[Path, ...]
    device: str
    dtype: str
    output_dir: Path
    n_prompts_built: int


def available_templates() -> list[str]:
    """The per-task templates, in run order."""
    names = [p.stem for p in TEMPLATES_DIR.glob("*.ipynb") if p.stem not in CROSS_TASK_TEMPLATES]
    order = {name: i for i, name in enumerate(TEMPLATE_ORDER)}
    return sorted(names, key=lambda n: (order.get(n, len(order)), n))


def prepare_run(
    task: str,
    *,
    model: str | None = None,
    n_prompts: int | None = None,
    seed: int | None = None,
    device: str = "auto",
    dtype: str = "float32",
    templates: list[str] | None = None,
    notebooks_dir: Path = NOTEBOOKS_DIR,
    when_checked: Callable[[TaskSpec, list[str]], None] | None = None,
) -> RunPlan:
    """Validate everything that can be validated without running the model. ``when_checked`` is called with
    the spec and the templates once the task file, the command line and the template list are valid,
    before the tokenizer loads (the runner starts its kernel's warm-up there).

    Raises:
        TaskError, ModelLoadError, ValueError: with a message naming the problem and the fix.
    """
    task_file = resolve_task_path(task)
    spec = load_task(task_file)
    check_command_line(spec, n_prompts=n_prompts, seed=seed)
    if model is not None:
        model = _model_argument(model)
    spec = spec.with_overrides(model=model, n_prompts=n_prompts, seed=seed)
    # deferred: the command line reports a bad task before importing torch, transformers or Jupyter's libraries
    from helpers.models.load import load_tokenizer, pick_device, prepends_bos
    from helpers.models.sources import settle_hub_access
    from helpers.tasks.prompts import build_prompts

    pick_device(device)
    settle_hub_access(spec.model, log=lambda line: print(line, file=sys.stderr))
    known = available_templates()
    chosen = templates or known
    for name in chosen:
        if name not in known:
            raise ValueError(f"TEMPLATES: no template named {name!r}. Fix: use some of {', '.join(known)}.")
    repeated = sorted({name for name in chosen if chosen.count(name) > 1})
    if repeated:
        raise ValueError(f"TEMPLATES={','.join(chosen)}: {', '.join(repeated)} listed more than once. "
                         "Fix: list each template once.")
    if when_checked is not None:
        when_checked(spec, list(chosen))
    prompts = build_prompts(spec, load_tokenizer(spec.model), prepend_bos=prepends_bos(spec.model))
    check_context(prompts, spec)
    return RunPlan(
        spec=spec,
        task_file=task_file,
        task_text=task_file.read_text(encoding="utf-8"),
        templates=tuple(TEMPLATES_DIR / f"{name}.ipynb" for name in chosen),
        device=device,
        dtype=dtype,
        output_dir=notebooks_dir / spec.name,
        n_prompts_built=len(prompts),
    )


def check_command_line(spec: TaskSpec, *, n_prompts: int | None, seed: int | None) -> None:
    """``N=`` and ``SEED=`` are reported as what they are: values from the command line."""
    if n_prompts is not None:
        if n_prompts < 1:
            raise ValueError(f"N={n_prompts} (command line): a run needs at least 1 prompt. Fix: N=16 for a quick "
                             f"run, or leave N out for the task file's {spec.n_prompts}.")
        if spec.is_explicit and n_prompts > len(spec.prompts):
            raise ValueError(f"N={n_prompts} (command line): {spec.source} lists {len(spec.prompts)} prompts. "
                             f"Fix: N={len(spec.prompts)} or fewer, or leave N out.")
    if seed is not None and seed < 0:
        raise ValueError(f"SEED={seed} (command line): seeds are whole numbers from 0. Fix: SEED=1, or leave SEED "
                         f"out for the task file's {spec.seed}.")


def check_context(prompts: Any, spec: TaskSpec) -> None:
    """Every prompt fits the model's context (read from its config), or the longest is named."""
    # deferred: the command line reports a bad task before importing torch, transformers or Jupyter's libraries
    from helpers.models.load import model_config

    config = model_config(spec.model)
    limit = next((int(v) for v in (getattr(config, name, None) for name in ("n_positions", "max_position_embeddings",
                                                                             "n_ctx")) if v), None)
    if limit is None:
        return
    lengths = (prompts.final_pos + 1).tolist()
    longest = max(range(len(lengths)), key=lambda i: lengths[i])
    if lengths[longest] > limit:
        raise TaskError(spec.source, "templates" if not spec.is_explicit else f"prompts[{longest}]",
                        prompts.clean_prompts[longest], f"is {lengths[longest]} tokens, but model '{spec.model}' "
                        f"reads at most {limit}", "shorten the prompt, or use a model with a longer context")


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


def loads_model(templates: list[str]) -> bool:
    """Whether any of these templates (names in :data:`TEMPLATES_DIR`) starts a session, which loads the
    model: a run of templates that do not is not worth a warm-up."""
    for name in templates:
        path = TEMPLATES_DIR / f"{name}.ipynb"
        if path.is_file() and any("start_session(" in "".join(cell.get("source", ""))
                                  for cell in json.loads(path.read_text(encoding="utf-8")).get("cells", [])
                                  if cell.get("cell_type") == "code"):
            return True
    return False


def _execute_locked(plan: RunPlan, log: Any, fresh_kernels: bool, given: TemplateKernel | None) -> int:
    # deferred: the command line reports a bad task before importing torch, transformers or Jupyter's libraries
    from helpers.figures.images import add_static_images

    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=plan.output_dir))
    results: dict[str, Any] = {}
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
            failure = _run_template(template, notebook, {
                "task": plan.spec.to_dict(), "device": plan.device, "dtype": plan.dtype,
                "results_path": f"{name}.results.json"}, kernel)
            if failure is not None:
                if notebook.is_file():
                    add_static_images(notebook)
                return _report_failure(plan.output_dir, name, notebook, failure, log)
            finished.append(finishing.submit(staging, [name]))
            results[name] = json.loads((staging / f"{name}.results.json").read_text())
            took[name] = time.perf_counter() - started
            left = remaining_estimate(took, [t.stem for t in plan.templates[i:]], before)
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
                                               "provenance": {**provenance, "finished_at": _now()}}, log=log,
             seconds=took)
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
    _summarise(plan, results, log)
    return 0


@dataclass(frozen=True)
class TemplateFailure:
    """Why a template did not produce its results: what happened, and the cell it happened in."""

    problem: str
    source: str = ""


def _run_template(template: Path, notebook: Path, parameters: dict[str, Any],
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
        return TemplateFailure(f"stopped in cell [{err.exec_count}] with {err.ename}: {err.evalue}", str(err.source or ""))
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
    """The worker that finishes each executed notebook (:func:`_finish_notebooks`) while the kernel runs the
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
        return self._pool.submit(_finish_notebooks, folder, names)

    def close(self, *, wait: bool) -> None:
        """Stop the worker once what it is doing is done; with ``wait``, once everything submitted is."""
        self._pool.shutdown(wait=True, cancel_futures=not wait)


def _lowest_priority() -> None:
    if sys.platform.startswith("linux"):

        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except OSError:
            pass


def _finish_notebooks(folder: Path, names: list[str]) -> None:
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
            outcomes[task] = f"ok -> {_shown(plan.output_dir)}/"
        else:
            outcomes[task], code = f"failed (kept in {_shown(plan.output_dir / 'failed')}/)", 1
    if len(tasks) > 1:
        failed = [t for t, outcome in outcomes.items() if not outcome.startswith("ok")]
        log(f"\n{len(tasks) - len(failed)} of {len(tasks)} tasks succeeded" + (f"; failed: {', '.join(failed)}" if failed else ""))
        for task, outcome in outcomes.items():
            log(f"  {task:<16} {outcome}")
        return 1 if failed else 0
    return code


def export_html(tasks: list[str], *, notebooks_dir: Path = NOTEBOOKS_DIR, log: Any = print) -> int:
    """Re-export the executed notebooks of each task (or ``compare``) as HTML pages, and its index."""
    code = 0
    for task in tasks:
        try:
            task = output_name(task)
        except TaskError as err:
            print(f"error: {err}", file=sys.stderr)
            code = 2
            continue
        folder = notebooks_dir / task
        if not any(folder.glob("*.ipynb")):
            print(f"error: TASK = {task!r}: {_shown(folder)} holds no executed notebooks. Fix: make run TASK={task}",
                  file=sys.stderr)
            code = 2
            continue
        # deferred: the command line reports a bad task before importing torch, transformers or Jupyter's libraries
        from helpers.run.export import export_folder

        pages = export_folder(folder)
        log(f"{task}: {len(pages)} pages written to {_shown(folder)}/" + (
            " with index.html and README.md" if (folder / "index.html").is_file() else ""))
    return code


def missing_for_comparison(tasks: list[str], *, notebooks_dir: Path = NOTEBOOKS_DIR, model: str | None = None) -> list[str]:
    """The tasks whose ``results.json`` is absent, lacks a template the comparison reads, or (when
    ``model`` is given) came from another model."""
    missing = []
    for task in tasks:
        path = notebooks_dir / task / "results.json"
        data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        has_all = set(COMPARED_TEMPLATES) <= set(data.get("templates", {}))
        if not has_all or (model is not None and data.get("provenance", {}).get("model") != _model_argument(model)):
            missing.append(task)
    return missing


def _model_argument(model: str) -> str:
    """A model as a run uses and records it: a local directory made absolute (the kernel runs in
    another directory), anything else (a hub name, ``demo``) as given."""
    return str(Path(model).expanduser().resolve()) if Path(model).expanduser().is_dir() else model


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
    output_dir = notebooks_dir / "compare"
    output_dir.mkdir(parents=True, exist_ok=True)
    with RunLock(output_dir):
        return _compare_locked(tasks, output_dir, notebooks_dir, log)


def _compare_locked(tasks: list[str], output_dir: Path, notebooks_dir: Path, log: Any) -> int:
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=output_dir))
    try:
        log(f"compare: {', '.join(tasks)} ...")
        failure = _run_template(TEMPLATES_DIR / "compare.ipynb", staging / "compare.ipynb", {
            "tasks": list(tasks), "notebooks_dir": str(notebooks_dir.resolve()),
            "results_path": "compare.results.json"})
        if failure is not None:
            return _report_failure(output_dir, "compare", staging / "compare.ipynb", failure, log)
        section = json.loads((staging / "compare.results.json").read_text())
        results = results_file("compare", {"compare": section}, {
            "tasks": list(tasks), "finished_at": _now(),
            "suite_commit": _git_commit()})
        write_json(staging / "results.json", results)
        _finish_notebooks(staging, ["compare"])
        _publish(staging, output_dir, ["compare"])
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for line in section.get("summary", []):
        log(f"  {line}")
    log(f"The comparison is in {_shown(output_dir)}/: compare.ipynb, compare.html (offline page), results.json")
    return 0


def _publish(staging: Path, output_dir: Path, names: list[str]) -> None:
    """Move the comparison's notebook, page and results into place; only now are the previous ones
    replaced (a task's run lands through :func:`helpers.run.outputs.land`)."""
    for name in names:
        os.replace(staging / f"{name}.ipynb", output_dir / f"{name}.ipynb")
        os.replace(staging / f"{name}.html", output_dir / f"{name}.html")
    os.replace(staging / "results.json", output_dir / "results.json")
    shutil.rmtree(output_dir / "failed", ignore_errors=True)


def _report_failure(output_dir: Path, name: str, notebook: Path, failure: TemplateFailure, log: Any) -> int:
    failed_dir = output_dir / "failed"
    failed_dir.mkdir(exist_ok=True)
    kept = failed_dir / f"{name}.ipynb"
    if notebook.exists():
        os.replace(notebook, kept)
    source = "\n".join("      " + line for line in failure.source.splitlines()[:8])
    log(
        f"FAILED: template '{name}' {failure.problem}\n"
        + (f"  cell source:\n{source}\n" if source else "")
        + (f"  The failed notebook is kept for inspection at {_shown(kept)}\n" if kept.exists() else "")
        + f"  The previous results in {_shown(output_dir)} are untouched."
    )
    return 1


def _summarise(plan: RunPlan, results: dict[str, Any], log: Any) -> None:
    log(f"\nTask '{plan.spec.name}' on {plan.spec.model}, {plan.n_prompts_built} prompts:")
    for name, data in results.items():
        for line in data.get("summary", []):
            log(f"  {name}: {line}")
    log(f"Written to {_shown(plan.output_dir)}/: {len(results)} executed notebooks (.ipynb), their offline pages (.html), "
        f"results.json, and index.html / README.md listing them. Open them with: make lab TASK={plan.spec.name}")


def _shown(path: Path) -> str:
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
        "suite_commit": _git_commit(),
        "packages": versions,
    }


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m helpers.run", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--task", nargs="+", help="task names in params/ or paths to task .yaml files")
    which.add_argument("--all", action="store_true", help="run every task in params/")
    which.add_argument("--compare", nargs="+", metavar="TASK", help="compare these tasks' results (running missing ones)")
    which.add_argument("--html", nargs="+", metavar="TASK", help="re-export these tasks' notebooks as HTML, without running")
    which.add_argument("--lab", metavar="TASK", help="open JupyterLab at this task's executed notebooks")
    parser.add_argument("--model", help="override the task's model: a hub name, a local directory, or 'demo'")
    parser.add_argument("--n", type=int, dest="n_prompts", help="override the number of prompts")
    parser.add_argument("--seed", type=int, help="override the task's seed")
    parser.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--templates", help="comma-separated subset of templates to run (default: all)")
    parser.add_argument("--fresh-kernels", action="store_true",
                        help="run each template in a kernel of its own (slower; the figures are the same)")
    parser.add_argument("--notebooks-dir", type=Path, default=NOTEBOOKS_DIR, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    options = dict(model=args.model, n_prompts=args.n_prompts, seed=args.seed, device=args.device, dtype=args.dtype,
                   templates=[t.strip() for t in args.templates.split(",")] if args.templates else None,
                   notebooks_dir=args.notebooks_dir)
    try:
        if args.compare:
            return compare(_split(args.compare), **options)
        if args.html:
            return export_html(_split(args.html), notebooks_dir=args.notebooks_dir)
        if args.lab:
            return open_lab(args.lab, notebooks_dir=args.notebooks_dir)
        return run_tasks(available_tasks() if args.all else _split(args.task), fresh_kernels=args.fresh_kernels,
                         **options)
    except KeyboardInterrupt:

        logging.getLogger("asyncio").setLevel(logging.CRITICAL)  # the interrupted cell's pending task
        print("\ninterrupted: nothing of the unfinished run was kept; results written before it are intact "
              "(every kernel it started has been stopped)", file=sys.stderr)
        return 130


def open_lab(task: str, *, notebooks_dir: Path = NOTEBOOKS_DIR) -> int:
    """JupyterLab at the task's executed notebooks (the same folder ``make run`` writes)."""
    try:
        name = output_name(task)
    except TaskError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    folder = notebooks_dir / name
    if not any(folder.glob("*.ipynb")):
        print(f"error: {_shown(folder)}/ holds no executed notebooks yet. Fix: make run TASK={task}", file=sys.stderr)
        return 2
    root = notebooks_dir.resolve().parent
    url = "/lab/tree/" + str(folder.resolve().relative_to(root))
    return subprocess.call([sys.executable, "-m", "jupyter", "lab", f"--notebook-dir={root}",
                            f"--LabApp.default_url={url}"])


def _split(tasks: list[str]) -> list[str]:
    """Task arguments as given: ``numseq months``, ``"numseq months"`` or ``numseq,months``; a path to an
    existing task file stays whole, spaces and all (``"my tasks/x.yaml"``)."""
    found = []
    for arg in tasks:
        for piece in arg.split(","):
            piece = piece.strip()
            if Path(piece).expanduser().is_file():
                found.append(piece)
            else:
                found.extend(piece.split())
    return found


if __name__ == "__main__":
    sys.exit(main())
