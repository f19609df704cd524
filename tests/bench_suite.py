"""Benchmark of a whole run: every template on IOI, through the command line's own code (validation while
the kernel warms up, one kernel for the templates, pages written beside it), on the demo model (3 layers,
16 prompts) and on a GPT-2-small-shaped model (random weights, the task's default prompts).

For each template it prints the time the command line waited for it, split into the time its cells ran
(computation) and the rest (fixed cost: emptying the kernel, papermill, writing the notebook); the
kernel's peak memory while it ran; and, from a second run under torch's FLOP counter, the multiply-adds
its matrix products did. The run's total is printed against the budgets (the demo's whole run
<= 60 s, GPT-2 small's <= 3 min, fixed cost <= 3 s per template after the first, no template above 4 GB),
and the FLOP total against this machine's measured matmul throughput: the least time any implementation
doing those products could take here.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench_common import matmul_flops_per_second, shaped_model_dir

from helpers.run import execute as running
from helpers.run import plan as planning
from helpers.run.kernel import TemplateKernel
from helpers.tasks import spec

BUDGETS_S = {"demo": 60.0, "gpt2-small": 180.0}
FIXED_BUDGET_S = 3.0
MEMORY_BUDGET_GIB = 4e9 / 2**30  # 4 GB, 3.73 GiB (the figures are printed in GiB)
SLOWEST_CELLS = 3  # printed per template, with their times

# Run in the kernel around each template when counting: torch's FLOP counter over everything the
# template's cells compute (forward and backward matrix products, attention).
_COUNT_START = """\
import torch.utils.flop_counter as __fc
__fc._suite_bench_counter = __fc.FlopCounterMode(display=False)
__fc._suite_bench_counter.__enter__()
del __fc
"""
_COUNT_STOP = """\
import torch.utils.flop_counter as __fc
__fc._suite_bench_counter.__exit__(None, None, None)
print(__fc._suite_bench_counter.get_total_flops())
del __fc._suite_bench_counter, __fc
"""


@dataclass
class TemplateFigures:
    wall: float = 0.0
    cells: float = 0.0
    peak_gib: float = 0.0
    flops: float | None = None
    slowest: list[tuple[float, int]] = field(default_factory=list)  # (seconds, code cell number), slowest first

    @property
    def fixed(self) -> float:
        return self.wall - self.cells


@dataclass
class MeasuredKernel(TemplateKernel):
    """The runner's kernel, measuring each template: with ``timing``, the wall time of :meth:`run` (emptying
    included), its cells' times and the kernel's peak resident memory during it (Linux's high-water mark,
    reset before each); with ``count_flops``, the FLOPs of its cells."""

    timing: bool = True
    count_flops: bool = False
    figures: dict[str, TemplateFigures] = field(default_factory=dict)

    def __post_init__(self) -> None:
        TemplateKernel.__init__(self)

    def run(self, template: Path, notebook: Path, parameters: dict[str, Any]) -> None:
        figures = self.figures.setdefault(template.stem, TemplateFigures())
        self._reset_peak()
        started = time.perf_counter()
        try:
            super().run(template, notebook, parameters)  # empty() below starts the counter
        finally:
            if self.count_flops:
                printed: list[str] = []
                self.run_code(_COUNT_STOP, failure="could not read the FLOP counter", output=lambda message: printed.append(
                    message["content"].get("text", "")) if message.get("msg_type") == "stream" else None)
                figures.flops = float("".join(printed).strip() or "nan")
        if self.timing:
            figures.wall = time.perf_counter() - started
            figures.peak_gib = self._peak_gib()
            times = _cell_times(notebook)
            figures.cells = sum(seconds for seconds, _ in times)
            figures.slowest = sorted(times, reverse=True)[:SLOWEST_CELLS]

    def empty(self, folder: Path) -> None:
        super().empty(folder)
        if self.count_flops:  # counting starts after the reset (which would delete the counter)
            self.run_code(_COUNT_START, failure="could not start the FLOP counter")

    def _reset_peak(self) -> None:
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")

    def _peak_gib(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
        return float("nan")


def _cell_times(notebook: Path) -> list[tuple[float, int]]:
    """Each code cell's time and number (from 1), from papermill's per-cell start and end times."""
    times = []
    code_cells = [c for c in json.loads(notebook.read_text(encoding="utf-8"))["cells"] if c["cell_type"] == "code"]
    for number, cell in enumerate(code_cells, start=1):
        meta = cell.get("metadata", {}).get("papermill", {})
        if meta.get("start_time") and meta.get("end_time"):
            seconds = (dt.datetime.fromisoformat(meta["end_time"]) - dt.datetime.fromisoformat(meta["start_time"]))
            times.append((seconds.total_seconds(), number))
    return times


def run_suite(model: str, n_prompts: int | None, *, timing: bool = True, count_flops: bool = False,
              templates: list[str] | None = None) -> tuple[float, dict[str, TemplateFigures]]:
    """One run of every template (or of ``templates``) on IOI into a temporary folder, as ``make run`` does
    it; its wall time (from validation to the last page) and the figures per template."""
    with tempfile.TemporaryDirectory(prefix="bench-suite-") as folder:
        started = time.perf_counter()
        kernel = MeasuredKernel(timing=timing, count_flops=count_flops)
        try:
            plan = planning.prepare_run("ioi", model=model, n_prompts=n_prompts, notebooks_dir=Path(folder),
                                   templates=templates,
                                   when_checked=lambda spec, templates: kernel.warm_up(spec.model))
            lines: list[str] = []

            def log(line: str) -> None:  # the command line's progress per template, under the benchmark's heading
                lines.append(line)
                if line.startswith("["):
                    print("    " + line, flush=True)

            code = running.execute(plan, log=log, kernel=kernel)
        finally:
            kernel.close()
        if code != 0:
            raise SystemExit(f"the run on {model} failed (exit code {code}):\n" + "\n".join(lines))
        return time.perf_counter() - started, kernel.figures


def report(name: str, model: str, n_prompts: int | None, rate: float, *, flops: str = "separate",
           templates: list[str] | None = None) -> None:
    """Run and print. ``flops``: "separate" counts them in a second run (the counter's per-operation cost and
    its memory kept out of the timed run's figures), "same" in the timed run (one run: its times and peaks
    then include the counter's), "none" not at all."""
    prompts = n_prompts or spec.load_task(spec.resolve_task_path("ioi")).n_prompts
    print(f"\n{name}: IOI, {prompts} prompts" + (f"; templates {', '.join(templates)} only" if templates else ""),
          flush=True)
    total, figures = run_suite(model, n_prompts, count_flops=flops == "same", templates=templates)
    print(f"  {'template':20s} {'wall':>7s} {'cells':>7s} {'fixed':>7s} {'peak':>8s}   slowest code cells")
    for template, fig in figures.items():
        slowest = ", ".join(f"[{number}] {seconds:.1f}s" for seconds, number in fig.slowest)
        print(f"  {template:20s} {fig.wall:6.1f}s {fig.cells:6.1f}s {fig.fixed:6.1f}s {fig.peak_gib:6.2f}GiB   {slowest}")
    later = list(figures.values())[1:]
    worst_fixed = max((f.fixed for f in later), default=0.0)
    peak = max(f.peak_gib for f in figures.values())
    budget = BUDGETS_S[name]
    verdict = "not comparable: a subset of the templates" if templates else ("within" if total <= budget else "OVER")
    print(f"  whole run (validation to the last page): {total:.1f} s (budget {budget:.0f} s: {verdict})")
    print(f"  in the templates' cells: {sum(f.cells for f in figures.values()):.1f} s; fixed cost per template after "
          f"the first: at most {worst_fixed:.1f} s, mean {sum(f.fixed for f in later) / max(len(later), 1):.1f} s (budget "
          f"{FIXED_BUDGET_S:.0f} s: {'within' if worst_fixed <= FIXED_BUDGET_S else 'OVER'}); the first template's fixed "
          f"cost is the wait for the kernel's warm-up")
    if flops == "same":  # the counter keeps what it traces alive: 5.67 GiB against 3.47 without it, GPT-2 small
        print(f"  peak memory of the kernel: {peak:.2f} GiB in the worst template, with the FLOP counter's own memory in it "
              "(not compared with the budget: --flops separate or none for the templates' own)", flush=True)
    else:
        print(f"  peak memory of the kernel: {peak:.2f} GiB in the worst template (budget 4 GB = {MEMORY_BUDGET_GIB:.2f} "
              f"GiB: {'within' if peak <= MEMORY_BUDGET_GIB else 'OVER'})", flush=True)
    if flops == "none":
        return
    counted = run_suite(model, n_prompts, timing=False, count_flops=True, templates=templates)[1] if flops == "separate" else figures
    how = ("a second run, under torch's FLOP counter" if flops == "separate"
           else "counted in the timed run: the counter's cost per operation is in the cells' times")
    print(f"  {'template':20s} {'GFLOP':>9s} {'floor':>7s} {'cells':>7s}   ({how})")
    for template, fig in counted.items():
        flops = fig.flops or 0.0
        print(f"  {template:20s} {flops / 1e9:9.1f} {flops / rate:6.1f}s {figures[template].cells:6.1f}s")
    flops = sum((c.flops or 0.0) for c in counted.values())
    print(f"  FLOP floor of the cells' matrix products: {flops / 1e12:.2f} TFLOP, at least {flops / rate:.1f} s at "
          f"{rate / 1e9:.0f} GFLOP/s, against {sum(f.cells for f in figures.values()):.1f} s in the cells", flush=True)
    if not templates and total > budget:
        verdict = (f"the floor alone is over the {budget:.0f} s budget: no implementation of these products meets it "
                   "on this machine" if flops / rate > budget else
                   f"the floor is within the {budget:.0f} s budget: the time over it is this implementation's")
        print(f"  {verdict}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="demo,gpt2-small", help="comma-separated: demo, gpt2-small")
    parser.add_argument("--flops", choices=("separate", "same", "none"), default="separate",
                        help="count FLOPs in a second run (separate: the timed run's times and peaks are the "
                             "templates' own), in the timed run (same: one run, whose times and peaks then include "
                             "the counter's), or not")
    parser.add_argument("--templates", help="comma-separated subset of the templates (the totals are then partial)")
    args = parser.parse_args()
    templates = args.templates.split(",") if args.templates else None
    rate = matmul_flops_per_second()
    print(f"this machine's float32 matmul: {rate / 1e9:.0f} GFLOP/s")
    for name in args.models.split(","):
        if name == "demo":
            report("demo", "demo", 16, rate, flops=args.flops, templates=templates)
        else:
            report(name, str(shaped_model_dir(name)), None, rate, flops=args.flops, templates=templates)


if __name__ == "__main__":
    main()
