"""Static images draw what the interactive figure draws: for each trace type, the matplotlib figure behind
the PNG (``static.draw``) is read back and compared with the plotly figure (bars: how many, where, how
high, in which colour; error bars; lines and markers; boxes; legend entries and their colours), and the PNG
itself is checked for each trace's colour."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import plotly.graph_objects as go
import pytest
from matplotlib.collections import PathCollection
from matplotlib.colors import to_rgba
from matplotlib.container import BarContainer
from matplotlib.patches import Rectangle
from PIL import Image

from helpers.analyses.circuits.faithfulness import NormalisedFaithfulness
from helpers.figures import circuits as circuits_figures
from helpers.figures import static

COLORWAY = go.Figure().layout.template.layout.colorway


def bars_of(canvas: Any) -> list[Rectangle]:
    """The bars drawn (bar patches of every panel), in drawing order."""
    return [p for ax in canvas.axes for container in ax.containers if isinstance(container, BarContainer)
            for p in container.patches]


def legend_of(canvas: Any) -> list[tuple[str, tuple[float, ...]]]:
    """The legend's entries and the colour of each entry's handle."""
    legends = [ax.get_legend() for ax in canvas.axes if ax.get_legend() is not None]
    assert len(legends) == 1
    legend = legends[0]
    handles = legend.legend_handles
    colours = [tuple(h.get_facecolor()) if isinstance(h, Rectangle) else tuple(h.get_facecolor()[0])
               if isinstance(h, PathCollection) else to_rgba(h.get_color()) for h in handles]
    return list(zip([t.get_text() for t in legend.get_texts()], colours))


def png_colours(fig: go.Figure) -> set[tuple[int, int, int]]:
    image = np.asarray(Image.open(io.BytesIO(static.png(fig))).convert("RGB"))
    return {tuple(int(c) for c in pixel) for pixel in image.reshape(-1, 3)}


def rgb255(colour: str) -> tuple[int, int, int]:
    return tuple(round(c * 255) for c in to_rgba(colour)[:3])  # type: ignore[return-value]


CATEGORIES = ["walked", "EAP-IG top 13", "heads", "random"]
VALUES = {"resample": [0.9, 0.8, -0.2, 0.1], "mean": [0.7, -0.4, 0.3, 0.2], "zero": [0.5, 0.6, -0.1, 0.4]}


def three_traces(barmode: str | None) -> go.Figure:
    fig = go.Figure([go.Bar(x=CATEGORIES, y=values, name=name) for name, values in VALUES.items()])
    if barmode is not None:
        fig.update_layout(barmode=barmode)
    return fig


@pytest.mark.parametrize("barmode", [None, "group"])  # plotly groups by default
def test_grouped_bars_stand_side_by_side_in_each_trace_s_colour(barmode: str | None) -> None:
    fig = three_traces(barmode)
    canvas = static.draw(fig)
    bars = bars_of(canvas)
    assert len(bars) == len(VALUES) * len(CATEGORIES)
    for t, values in enumerate(VALUES.values()):
        drawn = bars[t * len(CATEGORIES):(t + 1) * len(CATEGORIES)]
        assert [b.get_height() for b in drawn] == pytest.approx(values)
        assert all(b.get_y() == 0.0 for b in drawn)
        assert {tuple(b.get_facecolor()) for b in drawn} == {to_rgba(COLORWAY[t])}
    for c in range(len(CATEGORIES)):  # the three bars of a category do not overlap and stay in its slot
        spans = sorted((b.get_x(), b.get_x() + b.get_width()) for b in bars[c::len(CATEGORIES)])
        assert all(left[1] <= right[0] + 1e-9 for left, right in zip(spans, spans[1:]))
        assert spans[0][0] >= c - 0.5 and spans[-1][1] <= c + 0.5
    assert legend_of(canvas) == [(name, to_rgba(COLORWAY[t])) for t, name in enumerate(VALUES)]
    assert {rgb255(COLORWAY[t]) for t in range(len(VALUES))} <= png_colours(fig)


def test_overlaid_bars_share_one_place_so_the_grouping_check_can_fail() -> None:
    """The check above compares positions: bars drawn at one place (one over another, as every bar trace was
    drawn before barmode was read) overlap."""
    canvas = static.draw(three_traces("overlay"))
    bars = bars_of(canvas)
    spans = sorted((b.get_x(), b.get_x() + b.get_width()) for b in bars[0::len(CATEGORIES)])
    assert not all(left[1] <= right[0] + 1e-9 for left, right in zip(spans, spans[1:]))
    assert len({b.get_x() for b in bars[0::len(CATEGORIES)]}) == 1  # overlay: one place, as plotly draws it


def test_stacked_bars_stand_on_the_traces_before_them() -> None:
    canvas = static.draw(three_traces("stack"))
    bars = bars_of(canvas)
    totals = np.zeros(len(CATEGORIES))
    for t, values in enumerate(VALUES.values()):
        drawn = bars[t * len(CATEGORIES):(t + 1) * len(CATEGORIES)]
        assert [b.get_y() for b in drawn] == pytest.approx(list(totals))
        assert [b.get_height() for b in drawn] == pytest.approx(values)
        totals += values
    assert len({b.get_x() for b in bars[0::len(CATEGORIES)]}) == 1


def test_relative_bars_stack_negative_values_down_from_zero() -> None:
    canvas = static.draw(three_traces("relative"))
    bars = bars_of(canvas)
    up, down = np.zeros(len(CATEGORIES)), np.zeros(len(CATEGORIES))
    for t, values in enumerate(VALUES.values()):
        drawn = bars[t * len(CATEGORIES):(t + 1) * len(CATEGORIES)]
        for c, (bar, value) in enumerate(zip(drawn, values)):
            base = up if value >= 0 else down
            assert bar.get_y() == pytest.approx(base[c]) and bar.get_height() == pytest.approx(value)
            base[c] += value


def test_error_bars_span_each_bar_s_interval() -> None:
    values, above, below = [1.0, -0.5, 0.25], [0.2, 0.1, 0.3], [0.1, 0.4, 0.05]
    fig = go.Figure(go.Bar(x=["a", "b", "c"], y=values,
                           error_y=dict(type="data", array=above, arrayminus=below)))
    canvas = static.draw(fig)
    (ax,) = canvas.axes
    (container,) = [c for c in ax.containers if isinstance(c, BarContainer)]
    segments = container.errorbar.lines[2][0].get_segments()
    assert [y for s in segments for y in (s[0][1], s[1][1])] == pytest.approx(
        [y for v, hi, lo in zip(values, above, below) for y in (v - lo, v + hi)])
    assert [s[0][0] for s in segments] == pytest.approx([b.get_x() + b.get_width() / 2 for b in container.patches])


def test_a_bar_per_value_keeps_its_own_colour() -> None:
    colours = ["#b2182b", "#2166ac", "#b2182b"]
    canvas = static.draw(go.Figure(go.Bar(x=["a", "b", "c"], y=[1, -1, 2], marker_color=colours)))
    assert [tuple(b.get_facecolor()) for b in bars_of(canvas)] == [to_rgba(c) for c in colours]


def test_lines_and_markers_take_each_trace_s_colour_and_the_legend_names_them() -> None:
    fig = go.Figure([go.Scatter(x=[0, 1, 2], y=[0.1, 0.5, 0.9], name="EAP", mode="lines+markers"),
                     go.Scatter(x=[0, 1, 2], y=[0.2, 0.4, 0.95], name="EAP-IG", mode="lines"),
                     go.Scatter(x=[0.5, 1.5], y=[0.3, 0.6], name="exact", mode="markers",
                                error_y=dict(type="data", array=[0.1, 0.2]))])
    canvas = static.draw(fig)
    (ax,) = canvas.axes
    lines = [line for line in ax.get_lines() if line.get_label() in ("EAP", "EAP-IG")]
    assert [to_rgba(line.get_color()) for line in lines] == [to_rgba(COLORWAY[0]), to_rgba(COLORWAY[1])]
    assert [list(line.get_ydata()) for line in lines] == [[0.1, 0.5, 0.9], [0.2, 0.4, 0.95]]
    markers = [c for c in ax.collections if c.get_label() == "exact"]
    assert len(markers) == 1 and tuple(markers[0].get_facecolor()[0]) == to_rgba(COLORWAY[2])
    assert markers[0].get_offsets().tolist() == [[0.5, 0.3], [1.5, 0.6]]
    error_segments = [c for c in ax.collections if c.get_label() != "exact" and hasattr(c, "get_segments")]
    assert [y for c in error_segments for s in c.get_segments() for y in (s[0][1], s[1][1])] == pytest.approx(
        [0.2, 0.4, 0.4, 0.8])
    assert [name for name, _ in legend_of(canvas)] == ["EAP", "EAP-IG", "exact"]
    assert [colour for _, colour in legend_of(canvas)] == [to_rgba(c) for c in COLORWAY[:3]]


def test_boxes_stand_at_their_names_in_each_trace_s_colour() -> None:
    fig = go.Figure([go.Box(y=[1, 2, 3, 4, 10], name="clean"), go.Box(y=[0, 1, 1, 2], name="corrupted")])
    canvas = static.draw(fig)
    (ax,) = canvas.axes
    assert [t.get_text() for t in ax.get_xticklabels()] == ["clean", "corrupted"]
    boxes = list(ax.patches)
    assert [tuple(p.get_edgecolor()) for p in boxes] == [to_rgba(COLORWAY[0]), to_rgba(COLORWAY[1])]
    # the median: the horizontal line as wide as the box (caps are half as wide)
    medians = [line for line in ax.get_lines() if len(line.get_xdata()) == 2
               and np.ptp(line.get_xdata()) == pytest.approx(0.6) and np.ptp(line.get_ydata()) == 0]
    assert [(float(line.get_ydata()[0]), to_rgba(line.get_color())) for line in medians] == [
        (3.0, to_rgba(COLORWAY[0])), (1.0, to_rgba(COLORWAY[1]))]


def test_the_figure_of_three_ablations_groups_its_bars_in_the_png() -> None:
    """The suite's own grouped figure (circuit_discovery's and circuit's): three bars per circuit, apart."""
    circuits = ["proposed", "walked", "EAP-IG top 13"]
    results = {kind: [NormalisedFaithfulness(name, 13, kind, 0.1 * i + 0.3 * j, 1.0, 0.0) for i, name in enumerate(circuits)]
               for j, kind in enumerate(("resample", "mean", "zero"))}
    fig = circuits_figures.plot_ablation_kinds(results)
    canvas = static.draw(fig)
    bars = bars_of(canvas)
    assert len(bars) == 9
    assert [b.get_height() for b in bars] == pytest.approx([r.faithfulness for rows in results.values() for r in rows])
    assert len({(round(b.get_x(), 6)) for b in bars}) == 9  # nine places, none drawn over another
    assert len({tuple(b.get_facecolor()) for b in bars}) == 3
    assert [name for name, _ in legend_of(canvas)] == [t.name for t in fig.data]
