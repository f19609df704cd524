"""Figures of direct logit attribution (:mod:`helpers.analyses.dla`): the logit difference, the logit
lens, attribution per component and per head, top predictions and attention patterns.
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from helpers.analyses.dla import (
    AttentionPatterns,
    ComponentAttribution,
    HeadAttribution,
    LogitDiffResult,
    LogitLensResult,
    TopPredictions,
)
from helpers.figures.heads import ATTENTION_WIDTH, plot_head_heatmap
from helpers.tasks.prompts import token_labels


def plot_logit_diff(result: LogitDiffResult) -> go.Figure:
    values = result.per_prompt.tolist()
    hover = [f"{p}<br>correct {c!r} vs incorrect {i!r}" for p, c, i in
             zip(result.prompts, result.correct_answers, result.incorrect_answers)]
    fig = go.Figure(go.Bar(x=list(range(len(values))), y=values, hovertext=hover,
                           marker_color=["#2166ac" if v > 0 else "#b2182b" for v in values]))
    fig.add_hline(y=result.mean, line_dash="dash", annotation_text=f"mean {result.mean:.3f}")
    title = "Logit difference (correct - incorrect) per prompt"
    if result.metric_per_prompt is not None:
        title = (f"Logit difference (mean correct - mean incorrect) per prompt; the task's {result.metric_name} "
                 f"is {result.metric_mean:.3f} on average")
    fig.update_layout(title=title, xaxis=dict(title="prompt", dtick=1 if len(values) <= 32 else None),
                      yaxis_title="logit difference")  # whole prompts: no ticks between them
    return fig


def plot_logit_lens(result: LogitLensResult) -> go.Figure:
    fig = go.Figure()
    for i in range(result.per_prompt.shape[1]):
        fig.add_trace(go.Scatter(x=list(result.labels), y=result.per_prompt[:, i].tolist(), mode="lines",
                                 line=dict(color="lightgray", width=1), showlegend=False, hoverinfo="skip"))
    fig.add_trace(go.Scatter(x=list(result.labels), y=result.mean.tolist(), mode="lines+markers", name="mean"))
    fig.add_hline(y=float(result.logit_diff.mean()), line_dash="dash",
                  annotation_text="model's logit difference")
    fig.update_layout(title="Logit lens: logit difference read after each layer", xaxis_title="residual stream after",
                      yaxis_title="logit difference")
    return fig


def plot_component_attribution(result: ComponentAttribution) -> go.Figure:
    mean = result.mean.tolist()
    fig = go.Figure(go.Bar(x=list(result.labels), y=mean,
                           marker_color=["#2166ac" if v > 0 else "#b2182b" for v in mean]))
    fig.update_layout(
        title=f"Direct logit attribution per component (sum {sum(mean):.3f} = "
        f"logit difference {float(result.logit_diff.mean()):.3f})",
        xaxis_title="component", yaxis_title="direct contribution to logit difference")
    return fig


def plot_head_attribution(result: HeadAttribution) -> go.Figure:
    return plot_head_heatmap(result.mean.tolist(), "Direct logit attribution per head",
                             colorbar_title="logit diff")


def top_predictions_table(result: TopPredictions) -> pd.DataFrame:
    return pd.DataFrame({"token": [repr(t) for t in result.tokens], "probability": result.probs},
                        index=pd.RangeIndex(1, len(result.tokens) + 1, name="rank"))


def plot_attention_patterns(result: AttentionPatterns) -> go.Figure:
    """Static heatmaps of each head's attention pattern, with token labels (query down, key across)."""
    labels = token_labels(result.str_tokens)
    n = len(result.heads)
    cols = min(n, 3)
    rows = (n + cols - 1) // cols
    # rows far enough apart that a panel's title clears the key labels of the panel above
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[f"{h.name} ({h.value:+.3f})" for h in result.heads],
                        horizontal_spacing=0.16, vertical_spacing=min(0.3, 0.9 / rows))
    for i, pattern in enumerate(result.patterns):
        fig.add_trace(go.Heatmap(z=pattern.tolist(), x=labels, y=labels, colorscale="Blues", zmin=0, zmax=1,
                                 showscale=i == 0, colorbar=dict(title="attention"),
                                 hovertemplate="query %{y}<br>key %{x}<br>%{z:.3f}<extra></extra>"),
                      row=i // cols + 1, col=i % cols + 1)
    ticks = dict(tickmode="array", tickvals=labels, ticktext=labels, tickfont=dict(size=9))  # every token labelled
    fig.update_yaxes(autorange="reversed", title_text="query", **ticks)
    fig.update_xaxes(title_text="key", tickangle=-60, **ticks)
    # at most 1100 px wide: fits the output area of a notebook at 1280-1400 px
    fig.update_layout(title=f"Attention patterns on: {result.prompt}", height=460 * rows, width=ATTENTION_WIDTH)
    return fig
