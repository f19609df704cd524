"""Sweeps: every task x model pair as an independent job on Ray (``make sweep``), then a comparison across
tasks and models.

``make sweep TASKS="ioi numseq" MODELS="gpt2 EleutherAI/pythia-160m"`` validates every task file, then
submits one Ray task per pair that runs the pair exactly as ``make run TASK=<task> MODEL=<model>`` would,
into the same folder (``notebooks/<task>/`` for the task file's own model, ``notebooks/<task>@<model>/``
for another: :func:`helpers.run.outputs.run_folder_name`). A pair whose results are current is skipped
(:func:`current_results`); a pair that fails is reported with its reason and the others go on. The
command line shows the sweep's progress as pairs finish. The sweep ends with ``templates/sweep.ipynb``
executed on every pair's results into ``notebooks/sweep/``.

Where the jobs run:

- by default a local Ray, started for the sweep and stopped after it, with this machine's CPUs (and GPUs);
- ``RAY_ADDRESS=host:6379`` (or ``auto``): an existing cluster. Every node needs the suite installed at the
  same path (``make setup``) and the notebooks folder on a shared filesystem, since each job writes its
  pair's folder where ``make run`` would;
- ``CPUS_PER_JOB=`` / ``GPUS_PER_JOB=`` are the Ray resources each job asks for (default 1 CPU, no GPU). A
  job given GPUs sees only those (Ray sets ``CUDA_VISIBLE_DEVICES``), and ``DEVICE=auto`` takes the first.

Ray is the scheduler: nothing here queues, retries or places jobs itself.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Only light modules here: a bad task file or argument is reported before torch, Ray and Jupyter load.
from helpers.paths import NOTEBOOKS_DIR, run_folder_name
from helpers.run.plan import available_templates, model_argument
from helpers.tasks.spec import TaskError, load_task, resolve_task_path

SWEEP_DIR = "sweep"
# Environment variables a job needs as the command line had them (a cluster's workers do not inherit ours).
JOB_ENVIRONMENT = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME", "HF_TOKEN")


@dataclass(frozen=True)
class Pair:
    """One job of the sweep: a task on a model, and the folder it writes."""

    task: str  # as given: a name in params/ or a path to a task file
    name: str  # the task's name
    model: str  # as a run records it (a local directory made absolute)
    folder: Path

    @property
    def label(self) -> str:
        return f"{self.name} x {self.model}"


@dataclass
class PairOutcome:
    pair: Pair
    status: str  # "done", "failed", "current" (skipped: its results are current)
    seconds: float = 0.0
    reason: str = ""  # why it failed
    log: list[str] = field(default_factory=list)


def plan_pairs(tasks: Sequence[str], models: Sequence[str], *, notebooks_dir: Path = NOTEBOOKS_DIR) -> list[Pair]:
    """Every task x model pair, tasks validated (no model is loaded: that is each job's first step).

    Raises:
        TaskError: a task file is invalid, with the field, the value and the fix.
        ValueError: no task or no model, or one listed twice.
    """
    if not tasks or not models:
        raise ValueError("a sweep needs tasks and models. Fix: make sweep TASKS=\"ioi numseq\" MODELS=\"gpt2 demo\"")
    for kind, items in (("TASKS", tasks), ("MODELS", models)):
        repeated = sorted({item for item in items if list(items).count(item) > 1})
        if repeated:
            raise ValueError(f"{kind}: {', '.join(repeated)} listed more than once. Fix: list each once.")
    pairs = []
    for task in tasks:
        spec = load_task(resolve_task_path(task))
        for model in models:
            recorded = model_argument(model)
            pairs.append(Pair(task, spec.name, recorded, notebooks_dir / run_folder_name(spec.name, recorded, spec.model)))
    return pairs


def current_results(pair: Pair, *, templates: Sequence[str], dtype: str, n_prompts: int | None, seed: int | None,
                    commit: str | None) -> bool:
    """Whether ``pair``'s folder already holds what this sweep would write: results of every template
    (or the reason it does not apply) from the same task file, model, dtype, prompts and seed, by the same
    commit of the suite (a pair run by another version of the code is run again)."""
    path = pair.folder / "results.json"
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    provenance = results.get("provenance", {})
    spec = load_task(resolve_task_path(pair.task))
    runs = provenance.get("template_runs", {})
    have = set(results.get("templates", {})) | {name for name, run in runs.items()
                                                if isinstance(run, dict) and run.get("not_applicable")}
    return (provenance.get("task_file_contents") == resolve_task_path(pair.task).read_text(encoding="utf-8")
            and provenance.get("model") == pair.model and provenance.get("dtype") == dtype
            and provenance.get("seed") == (spec.seed if seed is None else seed)
            and provenance.get("n_prompts") == (spec.n_prompts if n_prompts is None else n_prompts)
            and set(templates) <= have and commit is not None and provenance.get("suite_commit") == commit)


def run_pair(pair: Pair, options: dict[str, Any]) -> PairOutcome:
    """Run one pair as ``make run`` would (in the Ray worker): its log, its exit status and its reason."""
    # deferred: the command line reports a bad task before importing torch, transformers or Jupyter's libraries
    from helpers.run.execute import run_tasks

    lines: list[str] = []
    errors = io.StringIO()
    started = time.perf_counter()
    try:
        with contextlib.redirect_stderr(errors):
            code = run_tasks([pair.task], model=pair.model, log=lines.append, **options)
    except Exception as err:  # noqa: BLE001 - a job reports its failure; the sweep goes on
        code, lines = 1, [*lines, f"{type(err).__name__}: {err}"]
    seconds = time.perf_counter() - started
    stderr = [line for line in errors.getvalue().splitlines() if line.strip()]
    if code == 0:
        return PairOutcome(pair, "done", seconds, log=lines)
    said = [line for line in [*stderr, *lines] if line.startswith(("error:", "FAILED"))]
    reason = (said[0] if said else (lines[-1] if lines else f"exit status {code}")).removeprefix("error: ")
    return PairOutcome(pair, "failed", seconds, reason, [*lines, *stderr])


class Progress:
    """The sweep's line on the command line: pairs done, running, failed, and an estimate of what is left."""

    def __init__(self, total: int, slots: int, log: Any):
        self.total, self.slots, self.log = total, max(1, slots), log
        self.done = self.failed = self.skipped = 0
        self.seconds: list[float] = []

    def line(self) -> str:
        finished = self.done + self.failed + self.skipped
        left = self.total - finished
        running = min(left, self.slots)
        text = (f"sweep: {self.done} done, {running} running, {left - running} waiting, {self.failed} failed"
                + (f", {self.skipped} current (skipped)" if self.skipped else "") + f" of {self.total}")
        if left and self.seconds:
            estimate = sum(self.seconds) / len(self.seconds) * -(-left // self.slots)
            text += f"; about {_duration(estimate)} left"
        return text

    def record(self, outcome: PairOutcome) -> None:
        if outcome.status == "current":
            self.skipped += 1
        elif outcome.status == "failed":
            self.failed += 1
            self.seconds.append(outcome.seconds)
        else:
            self.done += 1
            self.seconds.append(outcome.seconds)
        what = {"done": f"done in {_duration(outcome.seconds)}", "current": "current, skipped",
                "failed": f"FAILED: {outcome.reason}"}[outcome.status]
        self.log(f"  {outcome.pair.label}: {what} -> {outcome.pair.folder}")
        self.log(self.line())


def _count(n: int, what: str) -> str:
    return f"{n} {what}" + ("" if n == 1 else "s")


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def sweep(tasks: Sequence[str], models: Sequence[str], *, address: str | None = None, cpus_per_job: float | int = 1,
          gpus_per_job: float | int = 0, notebooks_dir: Path = NOTEBOOKS_DIR, log: Any = print, rerun: bool = False,
          compare: bool = True, **options: Any) -> int:
    """Run every task x model pair on Ray (see the module docstring) and compare them.

    Args:
        address: an existing Ray cluster (``RAY_ADDRESS``); None starts a local one for the sweep.
        cpus_per_job, gpus_per_job: the Ray resources each pair's job asks for.
        rerun: run pairs whose results are current too.
        compare: end with the comparison notebook across tasks and models.
        options: as for :func:`helpers.run.plan.prepare_run` (``n_prompts``, ``seed``, ``device``, ``dtype``,
            ``templates``), the same for every pair.

    Returns:
        0 when every pair succeeded (or was current) and the comparison too; 2 for a bad task file or
        argument; 1 otherwise.
    """
    try:
        pairs = plan_pairs(tasks, models, notebooks_dir=notebooks_dir)
        if cpus_per_job <= 0 or gpus_per_job < 0:
            raise ValueError(f"CPUS_PER_JOB={cpus_per_job}, GPUS_PER_JOB={gpus_per_job}: a job needs some CPU and "
                             "no negative GPUs. Fix: CPUS_PER_JOB=1 GPUS_PER_JOB=0 (or 1 on a GPU machine)")
    except (TaskError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    # deferred: the command line reports a bad task before importing Ray, torch or Jupyter's libraries
    from helpers.run.execute import git_commit

    templates = options.get("templates") or available_templates()
    commit = git_commit()
    todo, outcomes = [], []
    for pair in pairs:
        if not rerun and current_results(pair, templates=templates, dtype=options.get("dtype", "float32"),
                                         n_prompts=options.get("n_prompts"), seed=options.get("seed"), commit=commit):
            outcomes.append(PairOutcome(pair, "current"))
        else:
            todo.append(pair)
    log(f"sweep: {_count(len(pairs), 'pair')} ({_count(len(tasks), 'task')} x {_count(len(models), 'model')}), "
        f"{len(pairs) - len(todo)} current")
    progress = Progress(len(pairs), 1, log)
    for outcome in outcomes:
        progress.record(outcome)
    outcomes += run_on_ray(todo, progress, address=address, cpus_per_job=cpus_per_job, gpus_per_job=gpus_per_job,
                           options={**options, "notebooks_dir": notebooks_dir.resolve()})
    failed = [o for o in outcomes if o.status == "failed"]
    log(f"\nsweep: {len(pairs) - len(failed)} of {len(pairs)} pairs succeeded" + (
        "; failed:" if failed else ""))
    for outcome in failed:
        log(f"  {outcome.pair.label}: {outcome.reason}")
    code = 1 if failed else 0
    if compare:
        succeeded = {o.pair for o in outcomes if o.status != "failed"}
        code = max(code, compare_sweep([p for p in pairs if p in succeeded], notebooks_dir=notebooks_dir, log=log))
    return code


def run_on_ray(pairs: Sequence[Pair], progress: Progress, *, address: str | None, cpus_per_job: float | int,
               gpus_per_job: float | int, options: dict[str, Any]) -> list[PairOutcome]:
    """Each pair as a Ray task with ``cpus_per_job`` CPUs and ``gpus_per_job`` GPUs, on the cluster at
    ``address`` or a local Ray started here (and stopped after); outcomes as the pairs finish, each recorded
    in ``progress`` (which learns the cluster's slots here)."""
    if not pairs:
        return []
    # deferred: Ray takes seconds to import and start; only a sweep with work to do needs it
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        environment = {name: os.environ[name] for name in JOB_ENVIRONMENT if name in os.environ}
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False,
                 runtime_env={"env_vars": environment} if environment else None)
    try:
        resources = ray.cluster_resources()
        slots = int(resources.get("CPU", 1) // cpus_per_job)
        if gpus_per_job:
            slots = min(slots, int(resources.get("GPU", 0) // gpus_per_job))
        if slots < 1:
            raise ValueError(f"no node of the Ray cluster has CPUS_PER_JOB={cpus_per_job} CPUs and GPUS_PER_JOB="
                             f"{gpus_per_job} GPUs free (it has {resources.get('CPU', 0):g} CPUs, "
                             f"{resources.get('GPU', 0):g} GPUs). Fix: ask for fewer per job")
        progress.slots = slots
        job = ray.remote(num_cpus=cpus_per_job, num_gpus=gpus_per_job, max_retries=0)(run_pair)
        waiting = {job.remote(pair, options): pair for pair in pairs}
        progress.log(progress.line())
        outcomes = []
        while waiting:
            [ready], _ = ray.wait(list(waiting), num_returns=1)
            pair = waiting.pop(ready)
            try:
                outcome = ray.get(ready)
            except ray.exceptions.RayError as err:  # the job's process died, or Ray could not run it
                outcome = PairOutcome(pair, "failed", reason=f"{type(err).__name__}: {str(err).splitlines()[0]}")
            progress.record(outcome)
            outcomes.append(outcome)
        return outcomes
    finally:
        if started_here:
            ray.shutdown()


def compare_sweep(pairs: Sequence[Pair], *, notebooks_dir: Path = NOTEBOOKS_DIR, log: Any = print) -> int:
    """``templates/sweep.ipynb`` on the pairs' results into ``notebooks/sweep/`` (see
    :func:`helpers.run.comparison.run_comparison`)."""
    # deferred: the comparison imports Jupyter's libraries
    from helpers.run.comparison import run_comparison

    landed = [p for p in pairs if (p.folder / "results.json").is_file()]
    if not landed:
        log("sweep: no pair has results to compare")
        return 1
    folders = {p.model: {} for p in landed}
    for p in landed:
        folders[p.model][p.name] = str(p.folder.resolve())
    return run_comparison("sweep", notebooks_dir / SWEEP_DIR, {"folders": folders}, log=log,
                          provenance={"pairs": [[p.name, p.model] for p in landed]})
