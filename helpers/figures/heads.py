"""Building blocks of the per-head figures and tables every analysis uses: the diverging colour scale and its
noise floor, the layer x head heatmap, head tables and the head-by-head scatter."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd
import plotly.colors
import plotly.graph_objects as go
from jaxtyping import Float
from torch import Tensor

from helpers.analyses.heads import HeadScore, head_name
from helpers.analyses.stats import Interval

DIVERGING = "RdBu"
# The smallest colour range of a signed heatmap, in the quantity's own unit (a normalised metric's 1,
# a logit): float32 noise is ~1e-6 of it, a real effect far more.
NOISE_FLOOR = 1e-3
ATTENTION_WIDTH = 1100  # px: the widest figure, so it fits a notebook's output area at 1280-1400 px


def colour_bound(values: Sequence[Sequence[float]]) -> float:
    """The symmetric colour range of a signed heatmap: its largest magnitude, but never below
    :data:`NOISE_FLOOR`, so values that are float noise (a patch that changes nothing, 5e-6) stay
    near white instead of being stretched to full colour."""
    return max(max((abs(v) for row in values for v in row), default=0.0), NOISE_FLOOR)


def plot_head_heatmap(
    values: Sequence[Sequence[float]], title: str, *, colorbar_title: str = "", unit_interval: bool = False
) -> go.Figure:
    """A layer x head heatmap: signed quantities centred on zero, or scores in [0, 1] with
    ``unit_interval``."""
    fig = go.Figure(head_heatmap_trace(values, unit_interval=unit_interval, colorbar=dict(title=colorbar_title)))
    fig.update_layout(title=title, xaxis=dict(title="head", dtick=1), yaxis=dict(title="layer", dtick=1, autorange="reversed"))
    return fig


def head_heatmap_trace(values: Sequence[Sequence[float]], *, unit_interval: bool = False, hover_prefix: str = "",
                        **options: object) -> go.Heatmap:
    """One layer x head heatmap trace, each cell hovering as its head's name and value; signed values
    on a diverging scale centred on zero (its own range), or scores on [0, 1]."""
    n_layers, n_heads = len(values), len(values[0])
    names = [[head_name(layer, head) for head in range(n_heads)] for layer in range(n_layers)]
    bound = colour_bound(values)
    scale = dict(colorscale="Blues", zmin=0, zmax=1) if unit_interval else dict(
        colorscale=DIVERGING, zmid=0, zmin=-bound, zmax=bound)
    return go.Heatmap(z=values, x=list(range(n_heads)), y=list(range(n_layers)), customdata=names, **scale,
                      hovertemplate=hover_prefix + "%{customdata}: %{z:.4f}<extra></extra>", **options)


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
    return ranked_columns(columns)


def ranked_columns(columns: Mapping[str, list[object]]) -> pd.DataFrame:
    """A table ranked from 1 whose columns may differ in length: the shorter ones are left empty below."""
    rows = max((len(values) for values in columns.values()), default=0)
    return pd.DataFrame({name: list(values) + [None] * (rows - len(values)) for name, values in columns.items()},
                        index=pd.RangeIndex(1, rows + 1, name="rank"))


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
