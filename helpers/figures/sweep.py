"""Figures of a sweep's comparison across tasks and models (:mod:`helpers.analyses.sweep`)."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from helpers.analyses.circuits.head_roles import ROLE_LABELS
from helpers.analyses.sweep import SweepResults, model_overlap, role_table, task_overlap
from helpers.figures.compare import plot_task_matrix


def pairs_table(sweep: SweepResults) -> pd.DataFrame:
    """One row per task and model: its shape, how well it does the task, its proposed circuit."""
    rows = []
    for task in sweep.tasks:
        for model in sweep.models:
            p = sweep.pair(task, model)
            if p is None:
                rows.append({"task": task, "model": model, "note": "no results (the pair failed)"})
                continue
            rows.append({
                "task": task, "model": model, "layers x heads": f"{p.shape[0]} x {p.shape[1]}" if p.shape else "",
                f"clean {p.metric or 'metric'}": p.clean_metric, "proposed circuit (edges)": p.circuit_edges,
                "faithfulness (resample)": p.faithfulness, "heads with a role": len(p.roles),
                "note": "; ".join(f"{name} not applicable: {why}" for name, why in p.not_applicable.items())})
    return pd.DataFrame(rows).set_index(["task", "model"])


def roles_table(sweep: SweepResults, task: str) -> pd.DataFrame:
    """For ``task``: each role some model's heads take, with those heads, one column per model."""
    table = role_table(sweep, task)
    rows = {ROLE_LABELS.get(role, role): {model: ", ".join(heads) for model, heads in by_model.items()}
            for role, by_model in table.items()}
    return pd.DataFrame.from_dict(rows, orient="index", columns=list(sweep.models)).fillna("").rename_axis(
        f"{task}: role")


def plot_circuit_size_by_model(sweep: SweepResults) -> go.Figure:
    """The proposed circuit's size for each task (one colour each) on each model, side by side."""
    fig = go.Figure()
    for task in sweep.tasks:
        sizes = [p.circuit_edges if (p := sweep.pair(task, m)) is not None else None for m in sweep.models]
        fig.add_trace(go.Bar(x=list(sweep.models), y=sizes, name=task,
                             hovertemplate="%{x}: %{y} edges<extra>" + task + "</extra>"))
    fig.update_layout(title="Size of the proposed circuit by model (edges)", xaxis_title="model",
                      yaxis_title="edges", legend_title="task")
    return fig


def plot_task_overlap(sweep: SweepResults, model: str) -> go.Figure:
    return plot_task_matrix(task_overlap(sweep, model), sweep.tasks,
                            f"{model}: Jaccard index of the tasks' path-patching edges", colorbar_title="Jaccard")


def plot_model_overlap(sweep: SweepResults, task: str) -> go.Figure:
    return plot_task_matrix(model_overlap(sweep, task), sweep.models,
                            f"{task}: Jaccard index of the models' path-patching edges (models of one shape)",
                            colorbar_title="Jaccard")
