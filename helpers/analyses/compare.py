"""Cross-task comparison: do different tasks run through the same heads?

Context. Each task's run leaves per-head numbers in ``notebooks/<task>/results.json``: direct logit
attribution and head-output patching (how much each head matters for that task), induction scores
(head functions) and copy scores. Set side by side, they show which heads several tasks share (a
shared sub-circuit, e.g. heads that find the last item of any sequence) and which serve one task only.

How. For each task and importance measure, the top ``k`` heads by absolute value form the task's head
set. Two tasks' sets are compared by their overlap (how many heads they share) and Jaccard index
(shared / in either). Independently of any ``k``, the Pearson correlation of two tasks' whole patching
maps says whether the same heads matter to the same degree. A head in every task's set is *shared*;
one in a single task's set is *specific* to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from helpers import results as results_format
from helpers.analyses.heads import HeadScore, head_name, rank_heads_by_magnitude
from helpers.errors import SuiteError
from helpers.paths import run_folder_name
from helpers.tasks.metrics import pearson_correlation
from helpers.tasks.spec import load_task, resolve_task_path

# Importance measures: (template, path to the layer x head values in its results), and their names.
MEASURES: dict[str, tuple[str, tuple[str, ...]]] = {
    "patching": ("patching", ("head_out", "values")),
    "dla": ("dla", ("heads", "mean")),
}
MEASURE_NAMES = {"patching": "head output patching", "dla": "direct logit attribution"}
# Head functions read for the shared heads.
SCORES: dict[str, tuple[str, tuple[str, ...]]] = {
    "induction": ("head_functions", ("role_scores", "induction", "values")),
    "copy": ("copy_scores", ("copy_scores", "copy", "values")),
}


class CompareError(SuiteError, ValueError):
    """The tasks' results cannot be compared; the message says why and what to run."""


@dataclass(frozen=True)
class TaskResults:
    """One task's per-head numbers, read from its ``results.json``."""

    task: str
    model: str
    n_prompts: int
    metric: str
    heads: dict[str, Float[Tensor, "layer head_index"]]  # by measure and score name
    # figures with a 95% bootstrap interval over the task's prompts: quantity -> (value, (low, high));
    # see INTERVAL_QUANTITIES. Absent where the task's results have no interval for it.
    intervals: dict[str, tuple[float, tuple[float, float]]] = field(default_factory=dict)
    # from the circuit-discovery notebook, when the task ran it: each head's role, and the path-patching edges
    roles: dict[str, str] = field(default_factory=dict)
    edges: frozenset[str] = frozenset()

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(next(iter(self.heads.values())).shape)  # type: ignore[return-value]


def task_folder(task: str, notebooks_dir: str | Path, model: str | None = None) -> Path:
    """Where ``task``'s run is: ``notebooks/<task>/``, or with ``model`` its run on that model
    (:func:`helpers.paths.run_folder_name`)."""
    if model is None:
        return Path(notebooks_dir) / task
    return Path(notebooks_dir) / run_folder_name(task, model, load_task(resolve_task_path(task)).model)


def load_task_results(tasks: list[str], notebooks_dir: str | Path, *, model: str | None = None) -> list[TaskResults]:
    """Read each task's ``notebooks/<task>/results.json`` (with ``model``, of its run on that model).

    Raises:
        CompareError: a task has no results, lacks a template the comparison reads, or was run on a
            model of another shape than the first task's.
    """
    folders = {t: task_folder(t, notebooks_dir, model) for t in tasks}
    missing = [t for t in tasks if not (folders[t] / "results.json").is_file()]
    if missing:
        raise CompareError(f"no results for {', '.join(missing)} in {notebooks_dir}. Fix: make run TASK=\"{' '.join(missing)}\""
                           + (f" MODEL={model}" if model else "") + " (make compare runs missing tasks itself).")
    loaded = []
    for task in tasks:
        data = results_format.load(folders[task] / "results.json")
        heads = {}
        for name, (template, path) in {**MEASURES, **SCORES}.items():
            value = results_format.read(data, template, *path)
            if value is None:
                raise CompareError(f"{task}'s results.json has no '{template}' results (the comparison reads "
                                   f"{'.'.join(path)}). Fix: make run TASK={task}")
            heads[name] = torch.tensor(value, dtype=torch.float32)
        provenance = data.get("provenance", {})
        loaded.append(TaskResults(task, str(provenance.get("model")), int(provenance.get("n_prompts", 0)),
                                  str(results_format.read(data, "patching", "metric", "task_metric") or ""), heads,
                                  _intervals_of(data), *circuit_of(data)))
    first = loaded[0]
    for other in loaded[1:]:
        if other.shape != first.shape:
            raise CompareError(f"{other.task} ran on {other.model} ({other.shape[0]} layers x {other.shape[1]} heads) "
                               f"but {first.task} on {first.model} ({first.shape[0]} x {first.shape[1]}): heads of "
                               f"different models cannot be compared. Fix: run both on one model (make run MODEL=...)")
    return loaded


# The figures compared across tasks by their intervals: name -> (template, path to a {value, ci95} pair's
# dict, value key), and whether the figure is in the task metric's own units (compared only between tasks
# with the same metric) or normalised (compared between any tasks).
INTERVAL_QUANTITIES: dict[str, tuple[str, tuple[str, ...], str, bool]] = {
    "mean logit difference": ("dla", ("logit_diff",), "mean", False),
    "circuit faithfulness": ("circuit", ("candidate",), "faithfulness", True),
}
# Per-head figures whose top heads carry intervals: name -> (template, path to the head lists, normalised).
HEAD_INTERVAL_QUANTITIES: dict[str, tuple[str, tuple[str, ...], bool]] = {
    "DLA": ("dla", ("heads",), False),
    "output patching": ("patching", ("head_out",), True),
}


def circuit_of(data: dict[str, Any]) -> tuple[dict[str, str], frozenset[str]]:
    """A results.json's circuit-discovery roles (head -> role, unknown included) and its path-patching edges
    by name (empty where it has no circuit-discovery section)."""
    roles = results_format.read(data, "circuit_discovery", "roles") or {}
    edges = results_format.read(data, "circuit_discovery", "edges") or []
    names = {f"{e['sender']}->{e['receiver']}" + (f"<{e['input']}>" if e.get("input") else "") for e in edges}
    return {head: str(r["role"]) for head, r in roles.items()}, frozenset(names)


@dataclass(frozen=True)
class CircuitComparison:
    """The tasks' head roles side by side and how much their path-patching edges overlap."""

    tasks: tuple[str, ...]
    roles: dict[str, dict[str, str]]  # head -> task -> role, for heads with a role (not unknown) in some task
    edges: tuple[frozenset[str], ...]
    jaccard: Float[Tensor, "task task"]  # edges in both / in either (NaN where neither task has edges)

    @property
    def shared_edges(self) -> list[str]:
        """Edges every task's circuit has."""
        return sorted(frozenset.intersection(*self.edges)) if self.edges and all(self.edges) else []

    @property
    def same_role(self) -> list[str]:
        """Heads with one role, not unknown, in every task."""
        return [h for h, by_task in self.roles.items()
                if len(set(by_task.values())) == 1 and len(by_task) == len(self.tasks) and "unknown" not in by_task.values()]

    @property
    def missing(self) -> list[str]:
        """Tasks whose results have no circuit-discovery section."""
        return [t for t, e in zip(self.tasks, self.edges) if not e]

    def to_dict(self) -> dict[str, Any]:
        return {"tasks": list(self.tasks), "roles": self.roles, "shared_edges": self.shared_edges,
                "same_role": self.same_role, "edge_jaccard": self.jaccard.tolist(),
                "edges": {t: sorted(e) for t, e in zip(self.tasks, self.edges)}}


def compare_circuits(results: list[TaskResults]) -> CircuitComparison:
    """Roles by head and task, and the Jaccard index of every pair of tasks' path-patching edges."""
    heads = sorted({h for r in results for h, role in r.roles.items() if role != "unknown"},
                   key=lambda h: tuple(int(p) for p in h[1:].split("H")))
    roles = {h: {r.task: r.roles.get(h, "unknown") for r in results} for h in heads}
    edges = [r.edges for r in results]
    return CircuitComparison(tuple(r.task for r in results), roles, tuple(edges), jaccard_matrix(edges))


def jaccard_matrix(edge_sets: list[frozenset[str] | None]) -> Float[Tensor, "set set"]:
    """Edges in both / in either, for every two of ``edge_sets``; NaN where neither has edges or one is None
    (not comparable)."""
    n = len(edge_sets)
    jaccard = torch.full((n, n), float("nan"))
    for i, a in enumerate(edge_sets):
        for j, b in enumerate(edge_sets):
            if a is not None and b is not None and (a | b):
                jaccard[i, j] = len(a & b) / len(a | b)
    return jaccard


def _intervals_of(data: dict[str, Any]) -> dict[str, tuple[float, tuple[float, float]]]:
    found: dict[str, tuple[float, tuple[float, float]]] = {}

    def keep(name: str, value: Any, ci95: Any) -> None:
        if value is not None and isinstance(ci95, list) and None not in ci95:
            found[name] = (float(value), (float(ci95[0]), float(ci95[1])))

    for name, (template, path, key, _) in INTERVAL_QUANTITIES.items():
        keep(name, results_format.read(data, template, *path, key), results_format.read(data, template, *path, "ci95"))
    for name, (template, path, _) in HEAD_INTERVAL_QUANTITIES.items():
        for sign in ("top_positive", "top_negative"):
            for head in results_format.read(data, template, *path, sign) or []:
                keep(f"{name} of {head['head']}", head.get("value"), head.get("ci95"))
    return found


def _normalised(quantity: str) -> bool:
    if quantity in INTERVAL_QUANTITIES:
        return INTERVAL_QUANTITIES[quantity][3]
    return HEAD_INTERVAL_QUANTITIES[quantity.split(" of ")[0]][2]


@dataclass(frozen=True)
class Difference:
    """One figure in two tasks, each with its 95% interval over that task's prompts.

    ``beyond_noise`` when the intervals do not overlap: then the tasks' figures differ by more than
    prompt-to-prompt noise explains. Non-overlap of two 95% intervals is a conservative test (for
    intervals of equal width it rejects equality at about p < 0.006); overlapping intervals do not show
    that the figures are equal.
    """

    quantity: str
    tasks: tuple[str, str]
    values: tuple[float, float]
    intervals: tuple[tuple[float, float], tuple[float, float]]

    @property
    def beyond_noise(self) -> bool:
        (low_a, high_a), (low_b, high_b) = self.intervals
        return high_a < low_b or high_b < low_a

    @property
    def gap(self) -> float:
        return self.values[1] - self.values[0]

    def to_dict(self) -> dict[str, Any]:
        return {"quantity": self.quantity, "tasks": list(self.tasks), "values": list(self.values),
                "intervals": [list(i) for i in self.intervals], "beyond_noise": self.beyond_noise}


def compute_differences(results: list[TaskResults]) -> list[Difference]:
    """Every figure with an interval in two tasks, pair by pair (task order as given, quantities in
    :data:`INTERVAL_QUANTITIES` order, then heads by name). Figures in the metric's own units (the mean
    logit difference, DLA) are compared only between tasks with the same metric; normalised ones
    (patching, faithfulness) between any two."""
    differences = []
    for i, a in enumerate(results):
        for b in results[i + 1:]:
            shared = [q for q in a.intervals if q in b.intervals and (_normalised(q) or a.metric == b.metric)]
            ordered = sorted(shared, key=lambda q: (q not in INTERVAL_QUANTITIES,
                                                    list(INTERVAL_QUANTITIES).index(q) if q in INTERVAL_QUANTITIES else 0, q))
            for q in ordered:
                differences.append(Difference(q, (a.task, b.task), (a.intervals[q][0], b.intervals[q][0]),
                                              (a.intervals[q][1], b.intervals[q][1])))
    return differences


def describe_differences(differences: list[Difference]) -> str:
    """One line: how many of the compared figures differ beyond prompt noise, and the largest."""
    if not differences:
        return "no figure has an interval in two tasks (intervals need 2 or more prompts)"
    beyond = [d for d in differences if d.beyond_noise]
    line = f"{len(beyond)} of {len(differences)} figures compared between tasks differ beyond prompt noise"
    if beyond:
        top = max(beyond, key=lambda d: abs(d.gap))
        line += (f"; the largest: {top.quantity}, {top.tasks[0]} {top.values[0]:.3f} vs "
                 f"{top.tasks[1]} {top.values[1]:.3f}")
    return line


def model_warning(results: list[TaskResults]) -> str | None:
    """Said when the tasks ran on differently named models of the same shape."""
    models = sorted({r.model for r in results})
    if len(models) > 1:
        return (f"the tasks ran on different models ({', '.join(models)}): head L9H9 of one is not L9H9 of another "
                "unless they are the same model saved in two places.")
    return None


@dataclass(frozen=True)
class HeadSets:
    """Each task's top-``k`` heads by one measure, and how much the sets overlap pair by pair."""

    measure: str
    k: int
    tasks: tuple[str, ...]
    sets: tuple[tuple[HeadScore, ...], ...]
    overlap: Float[Tensor, "task task"]  # heads in both sets
    jaccard: Float[Tensor, "task task"]  # in both / in either

    @property
    def mean_jaccard(self) -> float:
        """Mean Jaccard index over pairs of different tasks."""
        return mean_off_diagonal(self.jaccard)

    def heads_of(self, task: str) -> set[tuple[int, int]]:
        return {(h.layer, h.head) for h in self.sets[self.tasks.index(task)]}

    def to_dict(self) -> dict[str, Any]:
        return {"measure": self.measure, "k": self.k, "tasks": list(self.tasks),
                "top_heads": {t: [h.to_dict() for h in s] for t, s in zip(self.tasks, self.sets)},
                "overlap": self.overlap.tolist(), "jaccard": self.jaccard.tolist()}


def compute_head_sets(results: list[TaskResults], *, measure: str = "patching", k: int = 10) -> HeadSets:
    """Each task's ``k`` heads of largest absolute ``measure``, with pairwise overlap and Jaccard."""
    if measure not in MEASURES:
        raise ValueError(f"measure = {measure!r}: use one of {', '.join(MEASURES)}.")
    sets = tuple(tuple(rank_heads_by_magnitude(r.heads[measure], k)) for r in results)
    as_sets = [{(h.layer, h.head) for h in s} for s in sets]
    n = len(results)
    overlap, jaccard = torch.zeros(n, n), torch.zeros(n, n)
    for i in range(n):
        for j in range(n):
            both, either = len(as_sets[i] & as_sets[j]), len(as_sets[i] | as_sets[j])
            overlap[i, j], jaccard[i, j] = both, both / either
    return HeadSets(measure, k, tuple(r.task for r in results), sets, overlap, jaccard)


def mean_off_diagonal(matrix: Float[Tensor, "task task"]) -> float:
    """The mean of a task x task matrix over pairs of different tasks (NaN entries skipped)."""
    n = matrix.shape[0]
    values = matrix[~torch.eye(n, dtype=torch.bool)]
    values = values[~values.isnan()]
    return float(values.mean()) if values.numel() else float("nan")


def compute_map_correlations(results: list[TaskResults], *, measure: str = "patching") -> Float[Tensor, "task task"]:
    """Pearson correlation of every pair of tasks' whole layer x head maps (NaN if a map is constant)."""
    n = len(results)
    correlations = torch.ones(n, n)
    for i in range(n):
        for j in range(i + 1, n):
            r, _ = pearson_correlation(results[i].heads[measure].flatten(), results[j].heads[measure].flatten())
            correlations[i, j] = correlations[j, i] = r
    return correlations


@dataclass(frozen=True)
class SharedHeads:
    """Heads by the number of tasks whose head set holds them."""

    tasks: tuple[str, ...]
    in_tasks: dict[str, tuple[str, ...]]  # head name -> the tasks whose set holds it, most shared first
    positions: dict[str, tuple[int, int]]  # head name -> (layer, head)

    @property
    def shared(self) -> list[str]:
        """Heads in every task's set."""
        return [h for h, ts in self.in_tasks.items() if len(ts) == len(self.tasks)]

    @property
    def most_shared(self) -> list[str]:
        """The shared heads or, if no head is in every set, the heads in the most sets."""
        most = max((len(ts) for ts in self.in_tasks.values()), default=0)
        return [h for h, ts in self.in_tasks.items() if len(ts) == most]

    def specific(self, task: str) -> list[str]:
        """Heads in this task's set only."""
        return [h for h, ts in self.in_tasks.items() if ts == (task,)]

    def to_dict(self) -> dict[str, Any]:
        return {"shared": self.shared, "specific": {t: self.specific(t) for t in self.tasks},
                "in_tasks": {h: list(ts) for h, ts in self.in_tasks.items()}}


def compute_shared_heads(sets: HeadSets) -> SharedHeads:
    counts: dict[tuple[int, int], list[str]] = {}
    for task in sets.tasks:
        for head in sorted(sets.heads_of(task)):
            counts.setdefault(head, []).append(task)
    ordered = sorted(counts, key=lambda h: (-len(counts[h]), h))
    return SharedHeads(sets.tasks, {head_name(*h): tuple(counts[h]) for h in ordered},
                       {head_name(*h): h for h in ordered})


def head_function_scores(results: list[TaskResults], heads: list[str],
                         positions: dict[str, tuple[int, int]]) -> dict[str, dict[str, dict[str, float]]]:
    """``{head: {task: {"induction": ..., "copy": ..., measure: ...}}}`` for the given heads."""
    return {head: {r.task: {name: float(r.heads[name][positions[head]]) for name in (*SCORES, *MEASURES)}
                   for r in results} for head in heads}
