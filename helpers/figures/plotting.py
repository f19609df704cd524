"""Figures and tables for the analyses, with interpretability defaults.

Every ``plot_*`` takes a result dataclass and returns a ``plotly.graph_objects.Figure`` without showing
it. Signed quantities use a diverging red-blue scale centred on zero (blue = towards the correct
answer), heads are named ``L{layer}H{head}``, and token axes label each position ``"{i}: {token}"``
so repeated tokens stay distinct.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd
import plotly.colors
import plotly.graph_objects as go
from jaxtyping import Float
from plotly.subplots import make_subplots
from torch import Tensor

from helpers.analyses.ablation import AblationResult
from helpers.analyses.ablation_kinds import ABLATION_NAMES
from helpers.analyses.circuits.discovery import CircuitDiagram, PathWalk
from helpers.analyses.circuits.faithfulness import FaithfulnessByEdges, NormalisedFaithfulness
from helpers.analyses.circuits.graph import Edge
from helpers.analyses.circuits.head_circuits import (
    Circuit,
    CircuitFaithfulness,
    FaithfulnessCurve,
    Minimality,
    RandomBaseline,
)
from helpers.analyses.circuits.head_roles import ROLE_LABELS, HeadRole
from helpers.analyses.compare import (
    INTERVAL_QUANTITIES,
    MEASURE_NAMES,
    CircuitComparison,
    Difference,
    SharedHeads,
    TaskResults,
)
from helpers.analyses.copy_scores import AttentionProjection, CopyPredictions, CopyScores
from helpers.analyses.dla import (
    AttentionPatterns,
    ComponentAttribution,
    HeadAttribution,
    LogitDiffResult,
    LogitLensResult,
    TopPredictions,
)
from helpers.analyses.head_functions import ROLE_NAMES, ROLES, HeadRoleScores
from helpers.analyses.heads import HeadScore, head_name
from helpers.analyses.important_heads import ImportantHead
from helpers.analyses.neurons import NeuronActivations, NeuronPatching, NeuronWrites
from helpers.analyses.patching import VARIANTS, AttributionAgreement, MetricAnchors, PatchingResult
from helpers.analyses.stats import Interval
from helpers.analyses.vectors import PredictionChange, VectorArithmetic
from helpers.tasks.prompts import token_labels

DIVERGING = "RdBu"
# The smallest colour range of a signed heatmap, in the quantity's own unit (a normalised metric's 1,
# a logit): float32 noise is ~1e-6 of it, a real effect far more.
NOISE_FLOOR = 1e-3
ATTENTION_WIDTH = 1100  # px: the widest figure, so it fits a notebook's output area at 1280-1400 px


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


def _colour_bound(values: Sequence[Sequence[float]]) -> float:
    """The symmetric colour range of a signed heatmap: its largest magnitude, but never below
    :data:`NOISE_FLOOR`, so values that are float noise (a patch that changes nothing, 5e-6) stay
    near white instead of being stretched to full colour."""
    return max(max((abs(v) for row in values for v in row), default=0.0), NOISE_FLOOR)


def plot_head_heatmap(
    values: Sequence[Sequence[float]], title: str, *, colorbar_title: str = "", unit_interval: bool = False
) -> go.Figure:
    """A layer x head heatmap: signed quantities centred on zero, or scores in [0, 1] with
    ``unit_interval``."""
    fig = go.Figure(_head_heatmap_trace(values, unit_interval=unit_interval, colorbar=dict(title=colorbar_title)))
    fig.update_layout(title=title, xaxis=dict(title="head", dtick=1), yaxis=dict(title="layer", dtick=1, autorange="reversed"))
    return fig


def _head_heatmap_trace(values: Sequence[Sequence[float]], *, unit_interval: bool = False, hover_prefix: str = "",
                        **options: object) -> go.Heatmap:
    """One layer x head heatmap trace, each cell hovering as its head's name and value; signed values
    on a diverging scale centred on zero (its own range), or scores on [0, 1]."""
    n_layers, n_heads = len(values), len(values[0])
    names = [[head_name(layer, head) for head in range(n_heads)] for layer in range(n_layers)]
    bound = _colour_bound(values)
    scale = dict(colorscale="Blues", zmin=0, zmax=1) if unit_interval else dict(
        colorscale=DIVERGING, zmid=0, zmin=-bound, zmax=bound)
    return go.Heatmap(z=values, x=list(range(n_heads)), y=list(range(n_layers)), customdata=names, **scale,
                      hovertemplate=hover_prefix + "%{customdata}: %{z:.4f}<extra></extra>", **options)


def plot_head_attribution(result: HeadAttribution) -> go.Figure:
    return plot_head_heatmap(result.mean.tolist(), "Direct logit attribution per head",
                             colorbar_title="logit diff")


def head_table(positive: Sequence[HeadScore], negative: Sequence[HeadScore], *, value_name: str,
               intervals: Mapping[str, Interval] | None = None) -> pd.DataFrame:
    """The strongest positive and negative heads side by side (each list holds only heads of its sign, so
    one may be shorter: its rows are left empty), with each head's 95% interval where ``intervals`` has it."""
    columns: dict[str, list[object]] = {}
    for sign, heads in (("positive", positive), ("negative", negative)):
        columns[f"{sign} head"] = [h.name for h in heads]
        columns[f"{sign} {value_name}"] = [h.value for h in heads]
        if intervals:
            columns[f"{sign} 95% interval"] = [str(intervals[h.name]) if h.name in intervals else "" for h in heads]
    return _ranked_columns(columns)


def _ranked_columns(columns: Mapping[str, list[object]]) -> pd.DataFrame:
    """A table ranked from 1 whose columns may differ in length: the shorter ones are left empty below."""
    rows = max((len(values) for values in columns.values()), default=0)
    return pd.DataFrame({name: list(values) + [None] * (rows - len(values)) for name, values in columns.items()},
                        index=pd.RangeIndex(1, rows + 1, name="rank"))


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


def plot_patching(result: PatchingResult) -> go.Figure:
    """A layer x position (or layer x head) heatmap of the metric after each patch."""
    title = f"Patching clean into corrupted: {VARIANTS[result.kind].title}"
    if result.is_per_head:
        return plot_head_heatmap(result.values.tolist(), title, colorbar_title=result.metric_name)
    values = result.values.tolist()
    bound = _colour_bound(values)
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


def head_scatter(
    x: Float[Tensor, "layer head_index"], y: Float[Tensor, "layer head_index"], *, x_title: str, y_title: str,
    title: str,
) -> go.Figure:
    """Two per-head quantities against each other, one colour per layer (discrete: a layer is a category,
    not a quantity), with the diagonal y = x."""

    n_layers, n_heads = x.shape
    palette = plotly.colors.qualitative.Dark24
    fig = go.Figure()
    for layer in range(n_layers):
        fig.add_trace(go.Scatter(
            x=x[layer].tolist(), y=y[layer].tolist(), mode="markers", name=f"layer {layer}",
            text=[head_name(layer, head) for head in range(n_heads)],
            marker=dict(color=palette[layer % len(palette)], size=9),
            hovertemplate="%{text}<br>x %{x:.4f}<br>y %{y:.4f}<extra></extra>"))
    values = x.flatten().tolist() + y.flatten().tolist()
    low, high = min(values + [0.0]), max(values + [0.0])
    fig.add_trace(go.Scatter(x=[low, high], y=[low, high], mode="lines", line=dict(dash="dot", color="gray"),
                             showlegend=False, hoverinfo="skip"))
    fig.update_layout(title=title, xaxis_title=x_title, yaxis_title=y_title, legend_title_text="layer")
    return fig


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


def plot_role_scores(scores: HeadRoleScores, role: str) -> go.Figure:
    return plot_head_heatmap(
        scores.scores[role].tolist(), f"{ROLE_NAMES[role].capitalize()} score per head "
        f"({scores.batch} repeated random sequences of {scores.seq_len} tokens)", colorbar_title="score",
        unit_interval=True)


def role_score_table(scores: HeadRoleScores, k: int) -> pd.DataFrame:
    """The top ``k`` heads for each role, side by side: a role with fewer heads above 0 than another has
    blank rows at the bottom of its columns."""
    tops = {role: scores.top(role, k) for role in ROLES}
    rows = max((len(top) for top in tops.values()), default=0)
    columns: dict[str, list[object]] = {}
    for role, top in tops.items():
        blank = [None] * (rows - len(top))
        columns[f"{ROLE_NAMES[role]} head"] = [h.name for h in top] + blank
        columns[f"{ROLE_NAMES[role]} score"] = [h.value for h in top] + blank
    return pd.DataFrame(columns, index=pd.RangeIndex(1, rows + 1, name="rank"))


def heads_with_roles_table(heads: Sequence[ImportantHead], scores: HeadRoleScores) -> pd.DataFrame:
    """Important heads with their DLA, patching effect and score for each role."""
    rows = []
    for h in heads:
        rows.append({"head": h.name, "group": h.group, "DLA": h.dla, "output patching": h.patching,
                     **{ROLE_NAMES[role]: value for role, value in scores.of(h.layer, h.head).items()}})
    return pd.DataFrame(rows).set_index("head") if rows else pd.DataFrame()


def ablation_table(result: AblationResult) -> pd.DataFrame:
    return pd.DataFrame({
        "value": [float(result.logit_diff_before.mean()), float(result.logit_diff_after.mean()),
                  float(result.predicted_after.mean()), float(result.scale_ratio.mean()), result.compensation],
    }, index=pd.Index(["logit difference before", "logit difference after", "after, as the head's DLA predicted",
                       "final LayerNorm scale, after / before", "share of the predicted drop made up"], name=""))


def plot_ablation_dla(result: AblationResult) -> go.Figure:
    """Each head's DLA after the ablation against before: off-diagonal heads changed behaviour."""
    return head_scatter(result.dla_before, result.dla_after, x_title="DLA before", y_title="DLA after",
                        title=f"DLA per head after {result.method}-ablating {result.head.name} vs before")


def plot_copy_scores(scores: CopyScores, *, negative: bool = False) -> go.Figure:
    kind = "Negative copy" if negative else "Copy"
    return plot_head_heatmap(
        scores.scores(negative=negative).tolist(),
        f"{kind} score per head: share of {len(scores.inputs)} words whose token is in the top {scores.k}",
        colorbar_title="score", unit_interval=True)


def copy_score_table(scores: CopyScores, k: int) -> pd.DataFrame:
    """The top ``k`` copying and negative copying heads, side by side (only heads above 0% are listed, so
    one side may be shorter: its rows are left empty)."""
    copying, negative = scores.top(k), scores.top(k, negative=True)
    return _ranked_columns({
        "copying head": [h.name for h in copying], "copy score": [h.value for h in copying],
        "negative head": [h.name for h in negative], "negative copy score": [h.value for h in negative],
    })


def copy_scores_by_role_table(scores: CopyScores, heads: Sequence[HeadScore], *, negative: bool = False) -> pd.DataFrame:
    """Each head's score over the words of each role (placeholder) alone."""
    rows = [{"head": name, **values} for name, values in scores.by_role_of(heads, negative=negative).items()]
    return pd.DataFrame(rows).set_index("head") if rows else pd.DataFrame()


def copy_predictions_table(predictions: Sequence[CopyPredictions]) -> pd.DataFrame:
    """For each head and input, the head's top tokens, and whether the input's own token is among them."""
    rows = [{"head": p.head.name, "input": text, "top tokens": " | ".join(repr(t) for t in top), "input in top": copied}
            for p in predictions for text, top, copied in zip(p.inputs, p.top_tokens, p.copied)]
    return pd.DataFrame(rows).set_index(["head", "input"]) if rows else pd.DataFrame()


def plot_attention_vs_projection(result: AttentionProjection) -> go.Figure:
    """Attention from the final position to each word against the head's output on that word, by role."""
    fig = go.Figure()
    attention, projection = result.attention.tolist(), result.projection.tolist()
    for role in dict.fromkeys(result.roles):
        idx = [i for i, r in enumerate(result.roles) if r == role]
        fig.add_trace(go.Scatter(
            x=[attention[i] for i in idx], y=[projection[i] for i in idx], mode="markers", name=role,
            text=[f"{result.words[i]!r} in prompt {result.prompt_index[i]}" for i in idx],
            hovertemplate="%{text}<br>attention %{x:.3f}<br>projection %{y:.3f}<extra>" + role + "</extra>"))
    fig.add_hline(y=0, line_color="lightgray")
    fig.update_layout(
        title=f"{result.head.name}: attention vs output on each word (Pearson r = {result.pearson_r:.3f}, "
        f"p = {result.p_value:.2g}, {len(attention)} points)",
        xaxis_title="attention from the final position to the word",
        yaxis_title="head output \u00b7 the word's unembedding", legend_title="word role")
    return fig


def attention_projection_table(results: Sequence[AttentionProjection], scores: CopyScores) -> pd.DataFrame:
    rows = [{"head": r.head.name, "Pearson r": r.pearson_r, "p-value": r.p_value, "points": len(r.roles),
             "copy score": float(scores.copy[r.head.layer, r.head.head]),
             "negative copy score": float(scores.negative[r.head.layer, r.head.head])} for r in results]
    return pd.DataFrame(rows).set_index("head") if rows else pd.DataFrame()


def circuit_table(circuit: Circuit) -> pd.DataFrame:
    """The circuit's heads and where each is kept."""
    rows = [{"head": h.name, "kept at": "every position" if h.positions is None else ", ".join(map(str, h.positions))}
            for h in circuit.heads]
    return pd.DataFrame(rows, index=pd.RangeIndex(1, len(rows) + 1, name="#")) if rows else pd.DataFrame()


def _error_bar(results: Sequence[CircuitFaithfulness]) -> dict[str, object] | None:
    """Plotly error bars from the results' 95% intervals (None when none has one)."""
    if all(r.ci95 is None for r in results):
        return None
    upper = [0.0 if r.ci95 is None else r.ci95.high - r.faithfulness for r in results]
    lower = [0.0 if r.ci95 is None else r.faithfulness - r.ci95.low for r in results]
    return dict(type="data", symmetric=False, array=upper, arrayminus=lower, color="#444444")


def _interval_text(result: CircuitFaithfulness) -> str:
    return f"{result.faithfulness:.2f}" + ("" if result.ci95 is None else f" {result.ci95}")


def plot_faithfulness(result: CircuitFaithfulness) -> go.Figure:
    """The full model, the circuit and the empty circuit, each as a fraction of the full model (the circuit
    with its 95% interval over prompts)."""
    names = ["full model", f"{result.circuit.name} ({len(result.circuit)} heads)", "empty circuit (every head ablated)"]
    values = [1.0, result.faithfulness, result.empty_faithfulness]
    bar = go.Bar(x=names, y=values, text=["1.00", _interval_text(result), f"{result.empty_faithfulness:.2f}"],
                 textposition="outside", marker_color=["#999999", "#2166ac", "#b2182b"])
    if result.ci95 is not None:
        bar.error_y = dict(type="data", symmetric=False, array=[0, result.ci95.high - result.faithfulness, 0],
                           arrayminus=[0, result.faithfulness - result.ci95.low, 0], color="#444444")
    fig = go.Figure(bar)
    fig.update_layout(title=f"Faithfulness: {result.faithfulness:.2f} of the full model's metric "
                      f"({result.metric:.3f} of {result.full_metric:.3f})", yaxis_title="fraction of the full model",
                      xaxis_title="circuit")
    return fig


def plot_faithfulness_curve(curve: FaithfulnessCurve, *, target: float | None = None,
                            chosen: int | None = None) -> go.Figure:
    """Faithfulness as heads are added in order of importance, from none; with ``target``, the target
    line, and with ``chosen``, where the candidate circuit stops."""
    labels = ["none"] + [f"+{h}" for h in curve.heads]
    fig = go.Figure(go.Scatter(x=list(range(len(curve.fractions))), y=list(curve.fractions), mode="lines+markers",
                               name="faithfulness", text=labels,
                               hovertemplate="%{x} heads (%{text})<br>faithfulness %{y:.3f}<extra></extra>"))
    fig.add_hline(y=1.0, line_dash="dash", annotation_text="full model")
    if target is not None:
        fig.add_hline(y=target, line_dash="dot", line_color="#b2182b", annotation_text=f"target {target:.0%}",
                      annotation_position="bottom right")
    if chosen is not None and 0 <= chosen < len(curve.fractions):
        fig.add_vline(x=chosen, line_color="#2166ac", annotation_text=f"candidate: {chosen} heads")
        fig.add_trace(go.Scatter(x=[chosen], y=[curve.fractions[chosen]], mode="markers", name="candidate",
                                 marker=dict(size=14, color="#2166ac", symbol="diamond")))
    fig.update_layout(title="Faithfulness as heads are added in order of importance", xaxis_title="heads kept",
                      yaxis_title="fraction of the full model", showlegend=False,
                      xaxis=dict(tickmode="array", tickvals=list(range(len(labels))), ticktext=labels, tickangle=-45))
    return fig


def plot_minimality(result: Minimality) -> go.Figure:
    """For each circuit head, how much faithfulness drops when it alone is removed."""
    drops = list(result.drops)
    fig = go.Figure(go.Bar(x=list(result.heads), y=drops, marker_color=["#b2182b" if d > 0 else "#2166ac" for d in drops],
                           customdata=list(result.without),
                           hovertemplate="%{x}<br>drop %{y:.3f}<br>faithfulness without it %{customdata:.3f}<extra></extra>"))
    fig.update_layout(title=f"Minimality: drop in faithfulness (from {result.circuit.faithfulness:.2f}) without each head",
                      xaxis_title="head removed", yaxis_title="drop in faithfulness")
    return fig


def circuit_comparison_table(results: Sequence[CircuitFaithfulness], baseline: RandomBaseline | None = None) -> pd.DataFrame:
    """Each circuit's size, metric and faithfulness with its 95% interval; with ``baseline``, a row for the
    random circuits of the candidate's size (their mean, and their range as the interval)."""
    rows = [{"circuit": r.circuit.name, "heads": len(r.circuit), "metric": r.metric, "faithfulness": r.faithfulness,
             "95% interval": "" if r.ci95 is None else str(r.ci95)} for r in results]
    if baseline is not None:
        rows.append({"circuit": f"random ({len(baseline.results)} seeds)", "heads": baseline.size,
                     "metric": sum(r.metric for r in baseline.results) / len(baseline.results),
                     "faithfulness": baseline.mean, "95% interval": f"range [{baseline.low:.3f}, {baseline.high:.3f}]"})
    return pd.DataFrame(rows).set_index("circuit")


def plot_circuit_comparison(results: Sequence[CircuitFaithfulness], baseline: RandomBaseline | None = None) -> go.Figure:
    """Each circuit's faithfulness with its 95% interval; with ``baseline``, every random circuit of the
    candidate's size as a point, and their mean."""
    names = [f"{r.circuit.name} ({len(r.circuit)})" for r in results]
    values = [r.faithfulness for r in results]
    fig = go.Figure(go.Bar(x=names, y=values, text=[f"{v:.2f}" for v in values], textposition="outside",
                           error_y=_error_bar(results), name="circuits", marker_color="#2166ac"))
    if baseline is not None:
        label = f"random ({baseline.size})"
        fig.add_trace(go.Scatter(x=[label] * len(baseline.results), y=list(baseline.faithfulness), mode="markers",
                                 name="random circuits", marker=dict(color="#999999", size=9),
                                 text=[r.circuit.name for r in baseline.results],
                                 hovertemplate="%{text}<br>faithfulness %{y:.3f}<extra></extra>"))
        fig.add_trace(go.Bar(x=[label], y=[baseline.mean], name="random mean", marker_color="#cccccc",
                             text=[f"{baseline.mean:.2f}"], textposition="outside"))
    fig.add_hline(y=1.0, line_dash="dash", annotation_text="full model")
    if results:
        fig.add_hline(y=results[0].empty_faithfulness, line_dash="dot", annotation_text="empty circuit")
    fig.update_layout(title="Faithfulness of each circuit (number of heads)", yaxis_title="fraction of the full model",
                      xaxis_title="circuit", showlegend=False, barmode="overlay")
    return fig


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


def plot_neuron_patching(result: NeuronPatching, k: int) -> go.Figure:
    """Every neuron's exact patching effect at the final position, the top ``k`` labelled."""
    effect = result.effect.tolist()
    top = set(result.top(k))
    fig = go.Figure(go.Bar(x=list(range(len(effect))), y=effect, marker_color=[
        "#b2182b" if n in top else "#2166ac" for n in range(len(effect))],
        hovertemplate="neuron %{x}<br>effect %{y:.4f}<extra></extra>"))
    fig.update_layout(title=f"Patching each neuron of L{result.layer}'s MLP at the final position: change in "
                      f"{result.metric_name} (top {k} in red)", xaxis_title="neuron", yaxis_title="effect")
    return fig


def plot_neuron_attribution(result: NeuronPatching) -> go.Figure:
    """Attribution estimate against exact patching, one point per neuron of the chosen layer."""
    exact, estimate = result.effect.tolist(), result.estimated_effect.tolist()
    fig = go.Figure(go.Scatter(x=exact, y=estimate, mode="markers", text=[f"neuron {n}" for n in range(len(exact))],
                               hovertemplate="%{text}<br>exact %{x:.4f}<br>estimate %{y:.4f}<extra></extra>"))
    low, high = min(exact + estimate + [0.0]), max(exact + estimate + [0.0])
    fig.add_trace(go.Scatter(x=[low, high], y=[low, high], mode="lines", line=dict(dash="dot", color="gray"),
                             showlegend=False, hoverinfo="skip"))
    fig.update_layout(title=f"L{result.layer} neurons: attribution estimate vs exact (Pearson r = {result.pearson:.3f})",
                      xaxis_title="exact effect", yaxis_title="attribution estimate", showlegend=False)
    return fig


def plot_neuron_screen(result: NeuronPatching) -> go.Figure:
    """The attribution screen over every layer: each neuron's estimated effect, layer by layer."""
    estimate = (result.estimate - result.corrupted_metric)
    fig = go.Figure()
    for layer in range(estimate.shape[0]):
        values = estimate[layer].tolist()
        fig.add_trace(go.Box(y=values, name=f"L{layer}", boxpoints="outliers",
                             marker_color="#b2182b" if layer == result.layer else "#2166ac"))
    fig.update_layout(title="Attribution screen: estimated effect of patching each neuron, per layer",
                      xaxis_title="layer", yaxis_title="estimated effect", showlegend=False)
    return fig


def neuron_table(writes: Sequence[NeuronWrites]) -> pd.DataFrame:
    return pd.DataFrame([{
        "neuron": w.name, "patching effect": w.effect, "direct logit diff per unit": w.direct_logit_diff,
        "promotes": " | ".join(repr(t) for t, _ in w.promoted), "suppresses": " | ".join(repr(t) for t, _ in w.suppressed),
    } for w in writes]).set_index("neuron") if writes else pd.DataFrame()


def plot_neuron_activations(result: NeuronActivations) -> go.Figure:
    """Each neuron's activation at the final position of every prompt, clean beside corrupted."""
    n = len(result.neurons)
    fig = make_subplots(rows=n, cols=1, shared_xaxes=True, vertical_spacing=0.04,
                        subplot_titles=[f"L{result.layer}N{neuron}" for neuron in result.neurons])
    prompts = list(range(result.clean.shape[1]))
    for i in range(n):
        for values, name, colour in ((result.clean[i], "clean", "#2166ac"), (result.corrupted[i], "corrupted", "#b2182b")):
            fig.add_trace(go.Scatter(x=prompts, y=values.tolist(), mode="markers", name=name, legendgroup=name,
                                     showlegend=i == 0, marker_color=colour, text=list(result.prompts),
                                     hovertemplate="%{text}<br>activation %{y:.3f}<extra>" + name + "</extra>"),
                          row=i + 1, col=1)
    fig.update_layout(title="Top neurons' activations at the final position, per prompt", height=max(300, 180 * n))
    fig.update_xaxes(title_text="prompt", row=n, col=1)
    return fig


# ---------------------------------------------------------------------------------------------------
# Cross-task comparison
# ---------------------------------------------------------------------------------------------------


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
        fig.add_trace(_head_heatmap_trace(result.heads[measure].tolist(), hover_prefix=f"{result.task} ", showscale=False),
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


# ---------------------------------------------------------------------------------------------------
# Circuit discovery
# ---------------------------------------------------------------------------------------------------

ROLE_COLOURS = {"name_mover": "#2166ac", "negative_name_mover": "#b2182b", "backup_name_mover": "#67a9cf",
                "s_inhibition": "#1b9e77", "induction": "#7570b3", "duplicate_token": "#e7298a",
                "previous_token": "#e6ab02", "copy": "#a6761d", "unknown": "#999999", "mlp": "#666666",
                "input": "#000000", "logits": "#000000"}
EFFECT_TITLE = "effect (share of clean - corrupted)"


def plot_path_map(walk: PathWalk, receiver: str, senders: Sequence[str]) -> go.Figure:
    """Path patching into one receiver: the effect of each sender's path into each of its inputs (rows
    q, k, v for a head; one row for an MLP or the logits), senders in graph order."""
    inputs = [f"{receiver}<{kind}>" for kind in "qkv"] if receiver.startswith("L") else [receiver]
    inputs = [name for name in inputs if name in walk.maps]
    columns = [s for s in senders if any(s in walk.maps[name] for name in inputs)]
    values = [[walk.maps[name].get(s, 0.0) for s in columns] for name in inputs]
    bound = _colour_bound(values)
    rows = [name.split("<")[1][:-1] if "<" in name else name for name in inputs]
    fig = go.Figure(go.Heatmap(z=values, x=columns, y=rows, colorscale=DIVERGING, zmid=0, zmin=-bound, zmax=bound,
                               colorbar=dict(title=EFFECT_TITLE),
                               hovertemplate="%{x} -> " + receiver + " %{y}: %{z:.3f}<extra></extra>"))
    fig.update_layout(title=f"Path patching into {receiver}: each sender's path, by input",
                      xaxis=dict(title="sender", tickangle=-90), yaxis=dict(title="input", autorange="reversed"),
                      height=220 + 40 * len(rows))
    return fig


def edges_table(edges: Sequence[Edge], *, k: int = 20) -> pd.DataFrame:
    """The strongest edges (largest absolute score first)."""
    top = sorted(edges, key=lambda e: -abs(e.score))[:k]
    return pd.DataFrame({"edge": [e.name for e in top], "score": [e.score for e in top],
                         "method": [e.method for e in top]}, index=pd.RangeIndex(1, len(top) + 1, name="rank"))


def plot_edge_faithfulness(curves: Sequence[FaithfulnessByEdges]) -> go.Figure:
    """Faithfulness of the top edges by each method at MIB's circuit sizes (fractions of all edges), by
    running each circuit."""
    fig = go.Figure()
    labels = [f"{f:.1%}".replace(".0%", "%") for f in curves[0].fractions] if curves else []
    for curve in curves:
        fig.add_trace(go.Scatter(x=list(range(len(curve.fractions))), y=list(curve.faithfulness), mode="lines+markers",
                                 name=f"{curve.method} ({curve.ablation}): CPR {curve.cpr:.2f}, CMD {curve.cmd:.2f}",
                                 customdata=list(curve.n_edges),
                                 hovertemplate="%{customdata} edges: faithfulness %{y:.3f}<extra></extra>"))
    fig.add_hline(y=1.0, line_dash="dash", annotation_text="full model")
    fig.update_layout(title="Faithfulness of the top edges, by running each circuit", yaxis_title="faithfulness",
                      xaxis=dict(title="share of the graph's edges kept", tickmode="array",
                                 tickvals=list(range(len(labels))), ticktext=labels),
                      legend=dict(orientation="h", y=-0.25))
    return fig


def curves_table(curves: Sequence[FaithfulnessByEdges]) -> pd.DataFrame:
    """Each method's CPR (area under the curve, higher is better) and CMD (area between it and 1, lower is
    better), as MIB scores them."""
    return pd.DataFrame({"method": [c.method for c in curves], "ablation": [c.ablation for c in curves],
                         "CPR (higher is better)": [c.cpr for c in curves],
                         "CMD (lower is better)": [c.cmd for c in curves]}).set_index(["method", "ablation"])


def plot_ablation_kinds(results: Mapping[str, Sequence[NormalisedFaithfulness]]) -> go.Figure:
    """Each circuit's faithfulness under each ablation, side by side: how much the figure depends on what
    ablated edges carry."""
    fig = go.Figure()
    for kind, rows in results.items():
        fig.add_trace(go.Bar(x=[r.circuit for r in rows], y=[r.faithfulness for r in rows], name=ABLATION_NAMES[kind],
                             text=[f"{r.faithfulness:.2f}" for r in rows], textposition="outside"))
    fig.add_hline(y=1.0, line_dash="dash", annotation_text="full model")
    fig.update_layout(title="Faithfulness of the same circuits under three ablations", barmode="group",
                      xaxis_title="circuit", yaxis_title="faithfulness", legend=dict(orientation="h", y=-0.25))
    return fig


def roles_table(roles: Mapping[str, HeadRole], *, include_unknown: bool = False) -> pd.DataFrame:
    """Each head's role, confidence and evidence (the unknown heads left out unless asked for)."""
    shown = {h: r for h, r in roles.items() if include_unknown or r.role != "unknown"}
    return pd.DataFrame({"role": [r.label for r in shown.values()], "confidence": [r.confidence for r in shown.values()],
                         "evidence": ["; ".join(r.evidence) for r in shown.values()]},
                        index=pd.Index(list(shown), name="head"))


def plot_circuit_diagram(diagram: CircuitDiagram, *, title: str = "") -> go.Figure:
    """The circuit: nodes by layer (across) and by the position they act at (up), coloured and labelled by
    role; edges drawn with width by effect (blue helps, red hurts), each labelled with the inputs it enters."""
    g = diagram.graph
    rows = {p: i for i, p in enumerate(diagram.positions)}
    cells: dict[tuple[float, str], list[str]] = {}
    for name, data in g.nodes(data=True):
        cells.setdefault((data["layer"], data["position"]), []).append(name)
    xy = {}
    for (layer, position), names in cells.items():
        for i, name in enumerate(names):
            xy[name] = (layer, rows.get(position, 0) + 0.3 * (i - (len(names) - 1) / 2))
    fig = go.Figure()
    largest = max((abs(d["score"]) for _, _, d in g.edges(data=True)), default=1.0) or 1.0
    for sender, receiver, data in g.edges(data=True):
        (x0, y0), (x1, y1) = xy[sender], xy[receiver]
        inputs = ",".join(data["inputs"])
        fig.add_trace(go.Scatter(
            x=[x0, x1], y=[y0, y1], mode="lines", showlegend=False, hoverinfo="text",
            line=dict(width=1 + 7 * abs(data["score"]) / largest, color="#2166ac" if data["score"] > 0 else "#b2182b"),
            text=f"{sender} -> {receiver}{f' ({inputs})' if inputs else ''}: {data['score']:+.3f}"))
        if inputs:
            fig.add_annotation(x=(x0 + x1) / 2, y=(y0 + y1) / 2, text=inputs, showarrow=False, font=dict(size=10),
                               bgcolor="rgba(255,255,255,0.8)")
    names = list(g.nodes)
    roles = [g.nodes[n]["role"] for n in names]
    fig.add_trace(go.Scatter(
        x=[xy[n][0] for n in names], y=[xy[n][1] for n in names], mode="markers+text", showlegend=False,
        marker=dict(size=22, color=[ROLE_COLOURS.get(r, "#999999") for r in roles], line=dict(color="white", width=1)),
        text=[n if r in ("input", "logits", "mlp") else f"{n}<br>{ROLE_LABELS.get(r, r)}" for n, r in zip(names, roles)],
        textposition="top center", hoverinfo="text"))
    n_layers = max((d["layer"] for _, d in g.nodes(data=True)), default=0)
    fig.update_layout(
        title=title or f"Circuit from {diagram.method.replace('_', ' ')}: nodes by layer and by where they act",
        xaxis=dict(title="layer", tickmode="array", tickvals=list(range(-1, int(n_layers) + 1)),
                   ticktext=["input", *map(str, range(int(n_layers))), "logits"], range=[-1.6, n_layers + 0.6]),
        yaxis=dict(title="acts at", tickmode="array", tickvals=list(rows.values()), ticktext=list(rows),
                   range=[-0.8, len(rows) - 0.2]),
        height=260 + 90 * len(rows), plot_bgcolor="white")
    return fig
