"""Figures of the comparison across tasks (:mod:`helpers.analyses.compare`).
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import plotly.graph_objects as go
from jaxtyping import Float
from plotly.subplots import make_subplots
from torch import Tensor

from helpers.analyses.circuits.head_roles import ROLE_LABELS
from helpers.analyses.compare import (
    INTERVAL_QUANTITIES,
    MEASURE_NAMES,
    CircuitComparison,
    Difference,
    SharedHeads,
    TaskResults,
)
from helpers.figures.heads import DIVERGING, head_heatmap_trace


def task_results_table(results: Sequence[TaskResults]) -> pd.DataFrame:
    return pd.DataFrame({
        "task": [r.task for r in results], "model": [r.model for r in results],
        "prompts": [r.n_prompts for r in results], "metric": [r.metric for r in results],
        "layers x heads": [f"{r.shape[0]} x {r.shape[1]}" for r in results],
    }).set_index("task")


def plot_importance_by_task(results: Sequence[TaskResults], measure: str, *, per_row: int = 4) -> go.Figure:
    """One layer x head heatmap per task, side by side. Each task keeps its own colour range (the
    tasks' metrics differ in scale); the hover shows the value."""
    rows = (len(results) + per_row - 1) // per_row
    cols = min(per_row, len(results))
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[r.task for r in results],
                        horizontal_spacing=0.04, vertical_spacing=0.12)
    for i, result in enumerate(results):
        fig.add_trace(head_heatmap_trace(result.heads[measure].tolist(), hover_prefix=f"{result.task} ", showscale=False),
                      row=i // per_row + 1, col=i % per_row + 1)
    fig.update_yaxes(autorange="reversed", dtick=1, title_text="layer", col=1)
    fig.update_yaxes(autorange="reversed", dtick=1)
    fig.update_xaxes(dtick=1, title_text="head")
    fig.update_layout(title=f"{MEASURE_NAMES[measure].capitalize()} per head, by task (layer down, head across; "
                            "blue helps, red hurts)", height=320 * rows)
    return fig


def plot_task_matrix(values: Float[Tensor, "task task"], tasks: Sequence[str], title: str, *,
                     colorbar_title: str, signed: bool = False) -> go.Figure:
    """A task x task heatmap with each cell's value written in it."""
    scale = dict(colorscale=DIVERGING, zmid=0, zmin=-1, zmax=1) if signed else dict(colorscale="Blues", zmin=0)
    fig = go.Figure(go.Heatmap(z=values.tolist(), x=list(tasks), y=list(tasks), text=[[f"{v:.2f}" for v in row]
                               for row in values.tolist()], texttemplate="%{text}", colorbar=dict(title=colorbar_title),
                               hovertemplate="%{y} / %{x}: %{z:.3f}<extra></extra>", **scale))
    fig.update_layout(title=title, yaxis_autorange="reversed")
    return fig


def shared_heads_table(shared: SharedHeads) -> pd.DataFrame:
    return pd.DataFrame({
        "head": list(shared.in_tasks),
        "in how many tasks' top heads": [len(ts) for ts in shared.in_tasks.values()],
        "tasks": [", ".join(ts) for ts in shared.in_tasks.values()],
    }).set_index("head")


def plot_task_intervals(results: Sequence[TaskResults]) -> go.Figure:
    """The headline figures with intervals (:data:`helpers.analyses.compare.INTERVAL_QUANTITIES`), one panel each:
    every task's value with its 95% interval over its prompts."""
    quantities = [q for q in INTERVAL_QUANTITIES if any(q in r.intervals for r in results)]
    fig = make_subplots(rows=1, cols=max(len(quantities), 1), subplot_titles=quantities or ["no intervals"])
    for col, quantity in enumerate(quantities, start=1):
        having = [r for r in results if quantity in r.intervals]
        values = [r.intervals[quantity][0] for r in having]
        lows, highs = zip(*(r.intervals[quantity][1] for r in having))
        fig.add_trace(go.Scatter(
            x=[r.task for r in having], y=values, mode="markers", marker=dict(size=10, color="#2166ac"),
            error_y=dict(type="data", symmetric=False, array=[h - v for h, v in zip(highs, values)],
                         arrayminus=[v - lo for v, lo in zip(values, lows)]),
            hovertemplate="%{x}: %{y:.3f}<extra></extra>", showlegend=False), row=1, col=col)
        fig.update_xaxes(title_text="task", row=1, col=col)
        fig.update_yaxes(title_text=quantity, row=1, col=col)
    fig.update_layout(title="Headline figures by task, with 95% intervals over each task's prompts")
    return fig


def differences_table(differences: Sequence[Difference]) -> pd.DataFrame:
    """Every figure compared between two tasks, those beyond prompt noise first (largest gap first)."""
    ordered = sorted(differences, key=lambda d: (not d.beyond_noise, -abs(d.gap)))
    return pd.DataFrame({
        "figure": [d.quantity for d in ordered],
        "tasks": [f"{d.tasks[0]} vs {d.tasks[1]}" for d in ordered],
        "values": [f"{d.values[0]:+.3f} vs {d.values[1]:+.3f}" for d in ordered],
        "95% intervals": [" vs ".join(f"[{lo:+.3f}, {hi:+.3f}]" for lo, hi in d.intervals) for d in ordered],
        "beyond noise": ["yes" if d.beyond_noise else "no" for d in ordered],
    })


def roles_by_task_table(comparison: CircuitComparison) -> pd.DataFrame:
    """Each head with a role in some task: its role in every task (blank where the task has none)."""
    rows = {h: {t: ROLE_LABELS.get(role, role) if role != "unknown" else "" for t, role in by_task.items()}
            for h, by_task in comparison.roles.items()}
    return pd.DataFrame.from_dict(rows, orient="index", columns=list(comparison.tasks)).rename_axis("head")


def head_function_table(scores: dict[str, dict[str, dict[str, float]]]) -> pd.DataFrame:
    rows = [{"head": head, "task": task, **values} for head, by_task in scores.items() for task, values in by_task.items()]
    return pd.DataFrame(rows).set_index(["head", "task"]) if rows else pd.DataFrame()
