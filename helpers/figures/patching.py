"""Figures of activation and attribution patching (:mod:`helpers.analyses.patching`).
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import plotly.graph_objects as go

from helpers.analyses.patching import VARIANTS, AttributionAgreement, MetricAnchors, PatchingResult
from helpers.figures.heads import DIVERGING, colour_bound, head_scatter, plot_head_heatmap


def plot_patching(result: PatchingResult) -> go.Figure:
    """A layer x position (or layer x head) heatmap of the metric after each patch."""
    title = f"Patching clean into corrupted: {VARIANTS[result.kind].title}"
    if result.is_per_head:
        return plot_head_heatmap(result.values.tolist(), title, colorbar_title=result.metric_name)
    values = result.values.tolist()
    bound = colour_bound(values)
    fig = go.Figure(go.Heatmap(
        z=values, x=list(result.column_labels), y=list(range(len(values))), colorscale=DIVERGING, zmid=0,
        zmin=-bound, zmax=bound, colorbar=dict(title=result.metric_name),
        hovertemplate="layer %{y}, position %{x}<br>%{z:.4f}<extra></extra>",
    ))
    labels = list(result.column_labels)
    fig.update_layout(title=title, yaxis=dict(title="layer", dtick=1, autorange="reversed"),
                      xaxis=dict(title="position (prompt 0's tokens)", tickangle=-45, tickmode="array",
                                 tickvals=labels, ticktext=labels))  # every token labelled
    return fig


def plot_head_scatter(x: PatchingResult, y: PatchingResult, *, x_title: str, y_title: str, title: str) -> go.Figure:
    """One point per head, hover ``L{layer}H{head}``, with the diagonal y = x for reference."""
    return head_scatter(x.values, y.values, x_title=x_title, y_title=y_title, title=title)


def plot_attribution_agreement(exact: PatchingResult, estimate: PatchingResult,
                               agreement: AttributionAgreement) -> go.Figure:
    return plot_head_scatter(
        exact, estimate, x_title="exact patching", y_title="attribution patching (estimate)",
        title=f"{VARIANTS[exact.kind].title}: attribution vs exact, Pearson r = {agreement.pearson:.3f}")


def anchors_table(anchors: MetricAnchors) -> pd.DataFrame:
    return pd.DataFrame({
        "run": ["clean", "corrupted"],
        f"mean {anchors.task_metric}": [anchors.clean_value, anchors.corrupted_value],
        anchors.metric_name: [anchors.clean_metric, anchors.corrupted_metric],
    }).set_index("run")


def agreement_table(agreements: Sequence[AttributionAgreement]) -> pd.DataFrame:
    return pd.DataFrame({
        "patching": [VARIANTS[a.kind].title for a in agreements],
        "Pearson r": [a.pearson for a in agreements],
        "largest |estimate - exact|": [a.max_abs_diff for a in agreements],
        "heads that differ most": [", ".join(f"{h.name} ({h.value:+.3f})" for h in a.largest_gaps[:3])
                                   for a in agreements],
    }).set_index("patching")
