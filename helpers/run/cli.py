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

This module reads the command line; the run's parts are :mod:`helpers.run.plan` (step 1: what a run will
do), :mod:`helpers.run.execute` (steps 2 and 3, one task or several), :mod:`helpers.run.comparison` (the
cross-task comparison), with :mod:`helpers.run.kernel` (the templates' kernel), :mod:`helpers.run.outputs`
(folders, locks, landing) and :mod:`helpers.run.export` (the offline pages).
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

# Only light modules here: a bad task file or argument is reported before torch, transformers and
# nbformat are imported (seconds); the rest is imported where it is used.
from helpers.paths import NOTEBOOKS_DIR
from helpers.run.comparison import compare
from helpers.run.execute import run_tasks, shown
from helpers.run.outputs import output_name
from helpers.tasks.spec import TaskError, available_tasks


def export_html(tasks: list[str], *, notebooks_dir: Path = NOTEBOOKS_DIR, model: str | None = None,
                log: Any = print) -> int:
    """Re-export the executed notebooks of each task (or ``compare``) as HTML pages, and its index; with
    ``model``, of each task's run on that model."""
    code = 0
    for given in tasks:
        try:
            task = output_name(given, model)
        except TaskError as err:
            print(f"error: {err}", file=sys.stderr)
            code = 2
            continue
        folder = notebooks_dir / task
        if not any(folder.glob("*.ipynb")):
            print(f"error: TASK = {task!r}: {shown(folder)} holds no executed notebooks. Fix: make run TASK={given}"
                  + (f" MODEL={model}" if model else ""),
                  file=sys.stderr)
            code = 2
            continue
        # deferred: the command line reports a bad task before importing torch, transformers or Jupyter's libraries
        from helpers.run.export import export_folder

        pages = export_folder(folder)
        log(f"{task}: {len(pages)} pages written to {shown(folder)}/" + (
            " with index.html and README.md" if (folder / "index.html").is_file() else ""))
    return code


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m helpers.run", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--task", nargs="+", help="task names in params/ or paths to task .yaml files")
    which.add_argument("--all", action="store_true", help="run every task in params/")
    which.add_argument("--compare", nargs="+", metavar="TASK", help="compare these tasks' results (running missing ones)")
    which.add_argument("--html", nargs="+", metavar="TASK", help="re-export these tasks' notebooks as HTML, without running")
    which.add_argument("--lab", metavar="TASK", help="open JupyterLab at this task's executed notebooks")
    which.add_argument("--sweep", nargs="+", metavar="TASK", help="run every task x --models pair as a job on Ray")
    parser.add_argument("--models", nargs="+", help="the sweep's models: hub names, local directories, or 'demo'")
    parser.add_argument("--ray-address", default=None,
                        help="an existing Ray cluster (host:port or auto); none: a local Ray for the sweep")
    parser.add_argument("--cpus-per-job", type=float, default=1.0, help="Ray CPUs each sweep job asks for")
    parser.add_argument("--gpus-per-job", type=float, default=0.0, help="Ray GPUs each sweep job asks for")
    parser.add_argument("--rerun", action="store_true", help="run the sweep's pairs whose results are current too")
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
        if args.sweep:
            # deferred: only a sweep needs Ray
            from helpers.run.sweep import sweep

            options.pop("model")
            return sweep(_split(args.sweep), _split(args.models or []), address=args.ray_address or None,
                         cpus_per_job=args.cpus_per_job, gpus_per_job=args.gpus_per_job, rerun=args.rerun, **options)
        if args.html:
            return export_html(_split(args.html), notebooks_dir=args.notebooks_dir, model=args.model)
        if args.lab:
            return open_lab(args.lab, notebooks_dir=args.notebooks_dir, model=args.model)
        return run_tasks(available_tasks() if args.all else _split(args.task), fresh_kernels=args.fresh_kernels,
                         **options)
    except KeyboardInterrupt:

        logging.getLogger("asyncio").setLevel(logging.CRITICAL)  # the interrupted cell's pending task
        print("\ninterrupted: nothing of the unfinished run was kept; results written before it are intact "
              "(every kernel it started has been stopped)", file=sys.stderr)
        return 130


def open_lab(task: str, *, notebooks_dir: Path = NOTEBOOKS_DIR, model: str | None = None) -> int:
    """JupyterLab at the task's executed notebooks (the same folder ``make run`` writes; with ``model``, the
    task's run on that model)."""
    try:
        name = output_name(task, model)
    except TaskError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    folder = notebooks_dir / name
    if not any(folder.glob("*.ipynb")):
        print(f"error: {shown(folder)}/ holds no executed notebooks yet. Fix: make run TASK={task}"
              + (f" MODEL={model}" if model else ""), file=sys.stderr)
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
