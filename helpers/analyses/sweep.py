"""A sweep's comparison: the same tasks on several models, side by side (``templates/sweep.ipynb``).

Context. :mod:`helpers.analyses.compare` compares tasks on one model head by head. Across models (GPT-2 and
Pythia, or Pythia's sizes) heads with the same name are different heads, so a sweep compares what each
model's circuit *is*: how well the model does each task, how large a circuit carries it and how faithful
it is, which roles its heads take (the same role table, one column per model), and, on each model, how
much the tasks' circuits overlap (the Jaccard index of their path-patching edges). Edge by edge, two
models' circuits are compared only where the models have the same shape.

Each pair's numbers are read from its ``results.json`` (the folder ``make run TASK=<task> MODEL=<model>``
writes). A pair that did not run a template simply lacks its figures; a template that does not apply to a
model (circuit discovery on Gemma 2) is named with its reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jaxtyping import Float
from torch import Tensor

from helpers import results as results_format
from helpers.analyses.circuits.head_roles import ROLE_VOCABULARY
from helpers.analyses.compare import CompareError, circuit_of, jaccard_matrix


@dataclass(frozen=True)
class PairResults:
    """One task on one model: the figures the sweep compares (None where the pair's run lacks them)."""

    task: str
    model: str
    folder: str
    shape: tuple[int, int] | None  # layers x heads
    metric: str | None
    clean_metric: float | None  # the task metric's mean on the clean prompts (the DLA notebook's)
    circuit_edges: int | None  # the proposed circuit's size
    faithfulness: float | None  # the proposed circuit's, under resample ablation
    roles: dict[str, str]  # head -> role (not unknown)
    edges: frozenset[str]  # the path-patching walk's edges
    not_applicable: dict[str, str]  # template -> why it does not apply

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "model": self.model, "shape": list(self.shape) if self.shape else None,
                "metric": self.metric, "clean_metric": self.clean_metric, "circuit_edges": self.circuit_edges,
                "faithfulness": self.faithfulness, "roles": self.roles, "n_edges": len(self.edges),
                "not_applicable": self.not_applicable}


def load_pair(task: str, model: str, folder: str | Path) -> PairResults:
    """A pair's figures from ``folder/results.json``.

    Raises:
        CompareError: the folder has no results.json.
    """
    path = Path(folder) / "results.json"
    if not path.is_file():
        raise CompareError(f"no results for {task} on {model} in {folder}. Fix: make run TASK={task} MODEL={model}")
    data = results_format.load(path)
    heads = results_format.read(data, "dla", "heads", "mean") or results_format.read(data, "patching", "head_out", "values")
    shape = (len(heads), len(heads[0])) if heads else None
    proposal = results_format.read(data, "circuit_discovery", "proposed_circuit") or {}
    roles, edges = circuit_of(data)
    runs = data.get("provenance", {}).get("template_runs", {})
    logit_diff = results_format.read(data, "dla", "logit_diff") or {}
    return PairResults(
        task=task, model=model, folder=str(folder), shape=shape,
        metric=logit_diff.get("metric", "logit_diff") if logit_diff else None,
        clean_metric=next((logit_diff[k] for k in ("metric_mean", "mean") if logit_diff.get(k) is not None), None),
        circuit_edges=proposal.get("edges"),
        faithfulness=(proposal.get("faithfulness", {}).get("resample") or {}).get("faithfulness"),
        roles={h: role for h, role in roles.items() if role != "unknown"}, edges=edges,
        not_applicable={name: run["not_applicable"] for name, run in runs.items()
                        if isinstance(run, dict) and run.get("not_applicable")},
    )


@dataclass(frozen=True)
class SweepResults:
    """Every pair's figures, by model then task, in the order given."""

    models: tuple[str, ...]
    tasks: tuple[str, ...]
    pairs: dict[str, dict[str, PairResults]]  # model -> task -> figures (a pair that did not land is absent)

    def pair(self, task: str, model: str) -> PairResults | None:
        return self.pairs.get(model, {}).get(task)



def load_sweep(folders: Mapping[str, Mapping[str, str | Path]]) -> SweepResults:
    """``folders``: model -> task -> the pair's folder (what ``make sweep`` passes the notebook)."""
    if not folders or not any(folders.values()):
        raise CompareError("a sweep comparison needs at least one pair's results. Fix: make sweep TASKS=... MODELS=...")
    pairs = {model: {task: load_pair(task, model, folder) for task, folder in by_task.items()}
             for model, by_task in folders.items()}
    tasks = tuple(dict.fromkeys(task for by_task in folders.values() for task in by_task))
    return SweepResults(tuple(folders), tasks, pairs)


def role_table(sweep: SweepResults, task: str) -> dict[str, dict[str, list[str]]]:
    """``{role: {model: heads}}`` for ``task``: which heads take each role on each model (roles in the
    vocabulary's order, only those some model has)."""
    table: dict[str, dict[str, list[str]]] = {}
    for role in ROLE_VOCABULARY:
        row = {m: sorted((h for h, r in p.roles.items() if r == role), key=_head_order)
               for m in sweep.models if (p := sweep.pair(task, m)) is not None}
        if any(row.values()):
            table[role] = row
    return table


def _head_order(name: str) -> tuple[int, int]:
    layer, head = name[1:].split("H")
    return int(layer), int(head)


def task_overlap(sweep: SweepResults, model: str) -> Float[Tensor, "task task"]:
    """On ``model``: the Jaccard index of every two tasks' path-patching edges (edges in both / in either;
    NaN where neither has edges or a task did not run there)."""
    found = [sweep.pair(t, model) for t in sweep.tasks]
    return jaccard_matrix([p.edges if p is not None else None for p in found])


def model_overlap(sweep: SweepResults, task: str) -> Float[Tensor, "model model"]:
    """For ``task``: the Jaccard index of every two models' path-patching edges, where the two models have
    the same shape (NaN otherwise: their heads are not the same heads)."""
    found = [sweep.pair(task, m) for m in sweep.models]
    jaccard = jaccard_matrix([p.edges if p is not None and p.shape is not None else None for p in found])
    for i, a in enumerate(found):
        for j, b in enumerate(found):
            if a is not None and b is not None and a.shape != b.shape:
                jaccard[i, j] = float("nan")
    return jaccard
