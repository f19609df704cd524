"""Figures of MLP neurons (:mod:`helpers.analyses.neurons`).
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from helpers.analyses.neurons import NeuronActivations, NeuronPatching, NeuronWrites


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
