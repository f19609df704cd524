"""Figures of circuit discovery on the graph of edges (:mod:`helpers.analyses.circuits.discovery`): the
path map, edge tables, faithfulness by edges, roles and the circuit diagram.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd
import plotly.graph_objects as go

from helpers.analyses.circuits.discovery import CircuitDiagram, PathWalk
from helpers.analyses.circuits.faithfulness import FaithfulnessByEdges
from helpers.analyses.circuits.graph import Edge
from helpers.analyses.circuits.head_roles import ROLE_LABELS, HeadRole
from helpers.figures.heads import DIVERGING, colour_bound

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
    bound = colour_bound(values)
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
