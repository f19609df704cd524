"""Figures of circuit discovery on the graph of edges (:mod:`helpers.analyses.circuits.discovery`): the
path map, edge tables, faithfulness by edges, roles and the circuit diagram.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pandas as pd
import plotly.graph_objects as go

from helpers.analyses.circuits.discovery import CircuitDiagram, PathWalk
from helpers.analyses.circuits.faithfulness import FaithfulnessByEdges
from helpers.analyses.circuits.graph import Edge
from helpers.analyses.circuits.head_roles import ROLE_LABELS, HeadRole
from helpers.figures.heads import DIVERGING, colour_bound

ROLE_COLOURS = {"name_mover": "#2166ac", "negative_name_mover": "#b2182b", "backup_name_mover": "#67a9cf",
                "s_inhibition": "#1b9e77", "induction": "#7570b3", "duplicate_token": "#e7298a",
                "previous_token": "#e6ab02", "copy": "#a6761d", "answer_writer": "#2166ac",
                "negative_answer_writer": "#b2182b", "successor": "#66a61e", "copy_suppression": "#d95f02",
                "unknown": "#999999", "mlp": "#666666",
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


# The diagram's geometry, in pixels: a node's marker, its label's font, a node's slot (one per node, up the
# figure) and the room each column leaves its label (to the node's right; see DiagramLayout).
NODE_SIZE, LABEL_FONT, SLOT = 18, 10, 30
LABEL_GAP = 3  # between a marker's edge and its label
CHAR_WIDTH = 0.68  # of the font size: wider than any sans-serif digit or capital, so labels are never underestimated
DIAGRAM_MARGIN = {"l": 80, "r": 30, "t": 60, "b": 150}
INPUT_DASH = {"q": "dash", "k": "dot", "v": "solid", None: "solid"}
INPUT_NAMES = {"q": "into a query (dashed)", "k": "into a key (dotted)", "v": "into a value", None: "into an MLP or the logits"}


@dataclass(frozen=True)
class DiagramLayout:
    """Where the diagram puts each node, so that no label overlaps another or a node: one column per layer
    value present (the input, each layer's heads, each MLP, the logits), as wide as the longest label
    beside its marker; one slot per node up the figure, each word role (``acts at``) as many slots as its
    fullest column. A node's label is its name, to the right of its marker, within its column and slot;
    its role is its colour (named in the legend)."""

    xy: dict[str, tuple[float, float]]  # node -> (column, slot)
    columns: tuple[float, ...]  # each column's layer value, left to right
    rows: dict[str, tuple[int, int]]  # word role -> (first slot, slots)
    slots: int  # up the figure, with a free slot between word roles
    width: int  # pixels
    height: int


def diagram_layout(diagram: CircuitDiagram) -> DiagramLayout:
    g = diagram.graph
    cells: dict[tuple[float, str], list[str]] = {}
    for name, data in g.nodes(data=True):
        cells.setdefault((data["layer"], data["position"]), []).append(name)
    columns = tuple(sorted({layer for layer, _ in cells}))
    rows, first = {}, 0
    for position in diagram.positions:
        n = max((len(names) for (_, p), names in cells.items() if p == position), default=1)
        rows[position] = (first, n)
        first += n + 1
    xy = {}
    for (layer, position), names in cells.items():
        base, n = rows.get(position, (0, 1))
        for i, name in enumerate(names):  # in graph order (build_diagram adds them so)
            xy[name] = (float(columns.index(layer)), base + (n - len(names)) / 2 + i)
    slots = first - 1
    longest = max((len(str(n)) for n in g.nodes), default=6)
    column_width = NODE_SIZE + LABEL_GAP + CHAR_WIDTH * LABEL_FONT * longest + 12  # pixels
    width = int(DIAGRAM_MARGIN["l"] + DIAGRAM_MARGIN["r"] + column_width * (len(columns) + 0.5))
    height = int(DIAGRAM_MARGIN["t"] + DIAGRAM_MARGIN["b"] + SLOT * (slots + 1))
    return DiagramLayout(xy, columns, rows, slots, max(width, 600), max(height, 360))


def _column_name(layer: float, n_layers: float) -> str:
    if layer < 0:
        return "input"
    if layer >= n_layers:
        return "logits"
    return f"MLP {int(layer)}" if layer % 1 else str(int(layer))


def plot_circuit_diagram(diagram: CircuitDiagram, *, title: str = "") -> go.Figure:
    """The circuit: nodes by layer (across) and by the position they act at (up), each coloured by its role
    and labelled with its name (:class:`DiagramLayout`: no label overlaps another or a node); edges drawn
    with width by effect (blue helps, red hurts) and dashed by the input they enter (one line per input)."""
    g = diagram.graph
    layout = diagram_layout(diagram)
    xy = layout.xy
    n_layers = max((d["layer"] for _, d in g.nodes(data=True)), default=0.0)
    fig = go.Figure()
    largest = max((abs(d["score"]) for _, _, d in g.edges(data=True)), default=1.0) or 1.0
    kinds_drawn = set()
    for sender, receiver, data in g.edges(data=True):
        (x0, y0), (x1, y1) = xy[sender], xy[receiver]
        inputs = data["inputs"] or [None]
        for i, kind in enumerate(inputs):
            offset = 0.12 * (i - (len(inputs) - 1) / 2)
            kinds_drawn.add(kind)
            fig.add_trace(go.Scatter(
                x=[x0, x1], y=[y0 + offset, y1 + offset], mode="lines", showlegend=False, hoverinfo="text", meta="edge",
                line=dict(width=1 + 7 * abs(data["score"]) / largest, dash=INPUT_DASH[kind],
                          color="rgba(33,102,172,0.7)" if data["score"] > 0 else "rgba(178,24,43,0.7)"),
                text=f"{sender} -> {receiver}{f' ({kind})' if kind else ''}: {data['score']:+.3f}"))
    names = list(g.nodes)
    roles = [g.nodes[n]["role"] for n in names]
    fig.add_trace(go.Scatter(
        x=[xy[n][0] for n in names], y=[xy[n][1] for n in names], mode="markers+text", showlegend=False, meta="nodes",
        marker=dict(size=NODE_SIZE, color=[ROLE_COLOURS.get(r, "#999999") for r in roles], line=dict(color="white", width=1)),
        text=names, textposition="middle right", hoverinfo="text",
        textfont=dict(size=LABEL_FONT, shadow="0px 0px 3px white"),  # a white halo: readable where lines pass
        hovertext=[f"{n}: {ROLE_LABELS.get(r, r)}, acts at {g.nodes[n]['position']}" for n, r in zip(names, roles)]))
    for role in dict.fromkeys(r for r in roles if r not in ("input", "logits")):
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=ROLE_LABELS.get(role, role), meta="legend",
                                 marker=dict(size=10, color=ROLE_COLOURS.get(role, "#999999"))))
    for kind in (k for k in INPUT_DASH if k in kinds_drawn):
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", name=INPUT_NAMES[kind], meta="legend",
                                 line=dict(color="#555555", dash=INPUT_DASH[kind])))
    fig.update_layout(
        title=title or f"Circuit from {diagram.method.replace('_', ' ')}: nodes by layer and by where they act "
                       "(blue helps, red hurts)",
        xaxis=dict(title="layer", tickmode="array", tickvals=list(range(len(layout.columns))), tickfont=dict(size=10),
                   ticktext=[_column_name(c, n_layers) for c in layout.columns], range=[-0.5, len(layout.columns)],
                   showgrid=False, zeroline=False),
        yaxis=dict(title="acts at", tickmode="array", tickvals=[first + (n - 1) / 2 for first, n in layout.rows.values()],
                   ticktext=list(layout.rows), range=[-1, layout.slots], showgrid=False, zeroline=False),
        width=layout.width, height=layout.height, margin=DIAGRAM_MARGIN, plot_bgcolor="white",
        # the legend under the axis title, clear of the plot: 60 pixels below the plot area
        legend=dict(orientation="h", x=0, y=-60 / (layout.height - DIAGRAM_MARGIN["t"] - DIAGRAM_MARGIN["b"]),
                    yanchor="top", font=dict(size=10)))
    return fig
