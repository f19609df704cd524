"""Figures of head circuits and of circuits under several ablations (:mod:`helpers.analyses.circuits.head_circuits`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd
import plotly.graph_objects as go

from helpers.analyses.ablations import ABLATION_NAMES
from helpers.analyses.circuits.faithfulness import NormalisedFaithfulness
from helpers.analyses.circuits.head_circuits import (
    Circuit,
    CircuitFaithfulness,
    FaithfulnessCurve,
    Minimality,
    RandomBaseline,
)


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
