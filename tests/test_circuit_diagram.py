"""The circuit diagram's labels never overlap each other or a node: on a 12-layer, 12-head circuit with many
heads at one word, every label's box is measured, in the interactive figure (its pixel geometry, each label's
width measured with a real font's metrics) and in the static image (the boxes matplotlib draws)."""

from __future__ import annotations

from itertools import combinations
from typing import Any

import networkx as nx
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PathCollection
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties

from helpers.analyses.circuits.discovery import CircuitDiagram
from helpers.figures import discovery as discovery_figures
from helpers.figures import static

Box = tuple[float, float, float, float]  # left, bottom, right, top (pixels)


def crowded_circuit() -> CircuitDiagram:
    """12 layers, 12 heads: every head of the last layer and half of layer 10's at the final position, three
    heads of each earlier layer at one word, every MLP, names of one and two digits."""
    g = nx.DiGraph()
    g.add_node("input", layer=-1.0, position="all", role="input")
    for layer in range(12):
        heads = range(12) if layer == 11 else range(0, 12, 2) if layer == 10 else (0, 7, 11)
        for head in heads:
            position = "end" if layer >= 10 else ("S2" if layer % 2 else "IO")
            role = "name_mover" if layer == 11 else "s_inhibition" if layer == 10 else "duplicate_token"
            g.add_node(f"L{layer}H{head}", layer=float(layer), position=position, role=role)
        g.add_node(f"MLP{layer}", layer=layer + 0.5, position="end", role="mlp")
    g.add_node("logits", layer=12.0, position="end", role="logits")
    for name in list(g.nodes):
        if name.startswith("L11"):
            g.add_edge(name, "logits", score=0.3, inputs=[], method="path_patching")
        elif name.startswith("L10"):
            g.add_edge(name, "L11H3", score=0.2, inputs=["q", "k"], method="path_patching")
        elif name.startswith(("L", "MLP")):
            g.add_edge("input", name, score=-0.1, inputs=["v"] if name.startswith("L") else [], method="path_patching")
            g.add_edge(name, "L11H0", score=0.1, inputs=["v"], method="path_patching")
    return CircuitDiagram(g, ("all", "IO", "S2", "end"), "path_patching")


def overlaps(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def assert_apart(labels: dict[str, Box], nodes: dict[str, Box]) -> None:
    for (m, a), (n, b) in combinations(labels.items(), 2):
        assert not overlaps(a, b), f"the labels of {m} and {n} overlap: {a} {b}"
    for m, a in labels.items():
        for n, b in nodes.items():
            assert not overlaps(a, b), f"the label of {m} overlaps the node {n}: {a} {b}"


@pytest.fixture(scope="module")
def figure() -> Any:
    return discovery_figures.plot_circuit_diagram(crowded_circuit())


def interactive_boxes(figure: Any) -> tuple[dict[str, Box], dict[str, Box]]:
    """Each node's label box and marker box in the interactive figure, in pixels."""
    layout = figure.layout
    width, height, margin = layout.width, layout.height, layout.margin
    (x0, x1), (y0, y1) = layout.xaxis.range, layout.yaxis.range

    def pixel(x: float, y: float) -> tuple[float, float]:  # plotly's plot area, y upwards as in the boxes
        return (margin.l + (x - x0) / (x1 - x0) * (width - margin.l - margin.r),
                margin.b + (y - y0) / (y1 - y0) * (height - margin.t - margin.b))

    [nodes] = [t for t in figure.data if t.meta == "nodes"]
    assert nodes.textposition == "middle right"
    size, font = nodes.marker.size, nodes.textfont.size
    renderer = FigureCanvasAgg(Figure(dpi=static.DPI)).get_renderer()  # for its fonts' metrics
    face = FontProperties(family="DejaVu Sans", size=font * 72 / renderer.dpi)  # wider than plotly's Open Sans
    label_boxes, node_boxes = {}, {}
    for name, x, y in zip(nodes.text, nodes.x, nodes.y):
        cx, cy = pixel(x, y)
        node_boxes[name] = (cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2)
        text_width, _, _ = renderer.get_text_width_height_descent(name, face, ismath=False)
        left = cx + size / 2 + 2  # plotly starts a right-hand label just beyond the marker
        label_boxes[name] = (left, cy - 0.6 * font, left + text_width, cy + 0.6 * font)
    return label_boxes, node_boxes


def test_the_interactive_diagram_keeps_its_labels_apart(figure: Any) -> None:
    label_boxes, node_boxes = interactive_boxes(figure)
    assert len(label_boxes) == 12 + 6 + 10 * 3 + 12 + 2
    assert_apart(label_boxes, node_boxes)
    assert max(box[2] for box in label_boxes.values()) <= figure.layout.width - figure.layout.margin.r  # all inside


@pytest.mark.parametrize(("setting", "value"), [("CHAR_WIDTH", 0.1), ("SLOT", 8)])
def test_the_check_sees_labels_that_overlap(setting: str, value: float, monkeypatch: pytest.MonkeyPatch) -> None:
    """Columns too narrow for their labels, or slots too low for them: the same check fails."""
    monkeypatch.setattr(discovery_figures, setting, value)
    with pytest.raises(AssertionError, match="overlap"):
        assert_apart(*interactive_boxes(discovery_figures.plot_circuit_diagram(crowded_circuit())))


def test_the_static_image_keeps_its_labels_apart(figure: Any) -> None:
    canvas = static.draw(figure)
    FigureCanvasAgg(canvas).draw()
    renderer = canvas.canvas.get_renderer()
    (ax,) = canvas.axes
    texts = {t.get_text(): t.get_window_extent(renderer) for t in ax.texts}
    [markers] = [c for c in ax.collections if isinstance(c, PathCollection) and len(c.get_offsets()) > 1]
    radius = (markers.get_sizes()[0] ** 0.5) * renderer.dpi / 72 / 2
    centres = ax.transData.transform(markers.get_offsets())
    [nodes] = [t for t in figure.data if t.meta == "nodes"]
    node_boxes = {name: (x - radius, y - radius, x + radius, y + radius) for name, (x, y) in zip(nodes.text, centres)}
    label_boxes = {name: (b.x0, b.y0, b.x1, b.y1) for name, b in texts.items()}
    assert set(label_boxes) == set(node_boxes)
    assert_apart(label_boxes, node_boxes)
    # the legend stands under the plot area, clear of every label and node
    legend = ax.get_legend().get_window_extent(renderer)
    assert legend.y1 < ax.get_window_extent(renderer).y0
    assert sorted(t.get_text() for t in ax.get_legend().get_texts()) == sorted(
        t.name for t in figure.data if t.meta == "legend")
