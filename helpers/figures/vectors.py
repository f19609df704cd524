"""Figures of vector arithmetic (:mod:`helpers.analyses.vectors`).
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from helpers.analyses.vectors import PredictionChange, VectorArithmetic


def vector_summary_table(result: VectorArithmetic) -> pd.DataFrame:
    """How often the intended answer is the top prediction, and its probability, per run."""
    runs = [result.before, result.after, *result.random]
    names = ["no vector", "update vector", *[f"random {i + 1}" for i in range(len(result.random))]]
    return pd.DataFrame({
        "answer is top": [r.top_share for r in runs],
        "mean answer probability": [float(r.answer_probs.mean()) for r in runs],
        "median answer rank": [float(r.answer_ranks.float().median()) for r in runs],
    }, index=pd.Index(names, name="run"))


def plot_vector_effect(result: VectorArithmetic) -> go.Figure:
    names = ["no vector", "update vector"] + [f"random {i + 1}" for i in range(len(result.random))]
    values = [result.before.top_share, result.after.top_share] + [r.top_share for r in result.random]
    colours = ["#999999", "#2166ac"] + ["#b2182b"] * len(result.random)
    fig = go.Figure(go.Bar(x=names, y=values, marker_color=colours, text=[f"{v:.0%}" for v in values],
                           textposition="outside"))
    fig.update_layout(title=f"Intended answer is the top prediction (scale {result.scale}, added after layer(s) "
                      f"{', '.join(map(str, result.layers))}; random vectors have the same norm {result.vector.norm:.2f})",
                      yaxis_title="share of target prompts", yaxis_range=[0, 1.1])
    return fig


def plot_vector_logit_lens(result: VectorArithmetic) -> go.Figure:
    """The intended answer's mean probability read after each layer, without and with the vector."""
    layers = list(range(result.before.lens_probs.shape[0]))
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=layers, y=result.before.lens_probs.mean(dim=1).tolist(), name="no vector",
                             mode="lines+markers", line_color="#999999"))
    fig.add_trace(go.Scatter(x=layers, y=result.after.lens_probs.mean(dim=1).tolist(), name="update vector",
                             mode="lines+markers", line_color="#2166ac"))
    if result.random:
        mean_random = sum(r.lens_probs.mean(dim=1) for r in result.random) / len(result.random)
        fig.add_trace(go.Scatter(x=layers, y=mean_random.tolist(), name="random vectors (mean)", mode="lines+markers",
                                 line=dict(color="#b2182b", dash="dot")))
    for layer in result.layers:
        fig.add_vline(x=layer, line_dash="dash", line_color="lightgray")
    fig.update_layout(title="Logit lens: the intended answer's probability after each layer (dashed: where the vector is added)",
                      xaxis_title="residual stream after layer", yaxis_title="mean probability of the intended answer")
    return fig


def prediction_change_table(change: PredictionChange) -> pd.DataFrame:
    return pd.DataFrame({
        "before": [f"{t!r} {p:.3f}" for t, p in change.before],
        "after": [f"{t!r} {p:.3f}" for t, p in change.after],
    }, index=pd.RangeIndex(1, len(change.before) + 1, name="rank"))
