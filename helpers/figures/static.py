"""A static image of every figure, for where JavaScript does not run.

GitHub, nbviewer, nbconvert and untrusted viewers show no plotly figure: it needs plotly.js. Each figure
the suite shows is therefore also stored as a PNG (:mod:`helpers.figures.viz` puts both in the output), drawn
here with matplotlib from the figure's own data, so no browser and no network is needed (plotly's own
image export, kaleido, drives a Chrome).

It draws what the suite's figures use (heatmaps; bars, grouped, stacked or overlaid as the layout's
``barmode`` says, with error bars and text; box plots; scatter and line traces; subplots by their domains;
reference lines, subplot titles, axis labels and a legend), each trace in the colour plotly gives it (its
own, else the template's colour way by trace order), not all of plotly: :func:`draw` raises
:class:`UnsupportedFigure` for anything else, and the output then holds the interactive figure alone.
:func:`draw` returns the matplotlib figure (what tests compare with the plotly one), :func:`png` its image.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from typing import Any

from helpers.errors import SuiteError

DPI = 100
COLORBAR_X = 0.9  # where colour bars stand, in figure fractions
DEFAULT_SIZE = (1000, 520)  # pixels, when the figure does not set its own
_TAG = re.compile(r"</?(?:b|i|em|sup|sub|span|a)(?:\s[^>]*)?>")  # plotly's own tags; "<|endoftext|>" is a token


class UnsupportedFigure(SuiteError, ValueError):
    """The figure uses something this module does not draw."""


def _text(value: Any) -> str:
    """Plotly's text, with its line breaks and without its HTML tags."""
    if value is None:
        return ""
    return _TAG.sub("", str(value).replace("<br>", "\n"))


def _colormap(colorscale: Sequence[Sequence[Any]]) -> Any:
    # deferred: matplotlib loads only when a PNG is drawn (the runner imports this module for every notebook)
    from matplotlib.colors import LinearSegmentedColormap, to_rgb

    def rgb(color: str) -> tuple[float, float, float]:
        if color.startswith("rgb"):
            parts = color[color.index("(") + 1 : color.index(")")].split(",")
            return tuple(float(p) / 255 for p in parts[:3])  # type: ignore[return-value]
        return to_rgb(color)

    return LinearSegmentedColormap.from_list("plotly", [(float(pos), rgb(color)) for pos, color in colorscale])


def _axis_names(trace: Any) -> tuple[str, str]:
    return trace.xaxis or "x", trace.yaxis or "y"


def _layout_axis(fig: Any, name: str, letter: str) -> Any:
    suffix = name[1:]
    return fig.layout[f"{letter}axis{suffix}"]


class _Categories:
    """Positions of categorical values on one axis, in order of first appearance."""

    def __init__(self) -> None:
        self.labels: list[str] = []
        self.cells: set[float] = set()  # numeric positions of heatmap cells: each gets its tick
        self.integers = True  # every numeric position drawn is a whole number (prompts, layers): no 0.5 ticks

    def positions(self, values: Sequence[Any]) -> list[float]:
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            self.integers = self.integers and all(float(v).is_integer() for v in values)
            return [float(v) for v in values]
        out = []
        for v in values:
            label = str(v)
            if label not in self.labels:
                self.labels.append(label)
            out.append(float(self.labels.index(label)))
        return out


def png(fig: Any) -> bytes:
    """The figure as a PNG, drawn with matplotlib (see the module docstring)."""
    buffer = io.BytesIO()
    draw(fig).savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def draw(fig: Any) -> Any:
    """The plotly figure drawn as a matplotlib ``Figure`` (see the module docstring)."""
    # deferred: matplotlib loads only when a PNG is drawn (the runner imports this module for every notebook)
    import matplotlib

    matplotlib.use("Agg", force=False)
    # deferred: matplotlib loads only when a PNG is drawn (the runner imports this module for every notebook)
    from matplotlib.figure import Figure

    width = fig.layout.width or DEFAULT_SIZE[0]
    height = fig.layout.height or DEFAULT_SIZE[1]
    canvas = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    title = _text(fig.layout.title.text)
    subplot_titles = any(a.xref == "paper" and a.yref == "paper" for a in fig.layout.annotations or ())
    top = 1 - (0.06 + 0.035 * title.count("\n") + 0.03 * subplot_titles) * (520 / height) ** 0.5 if title else 0.95
    left, right = 0.09, 0.87
    bottom = _bottom_margin(fig, height)
    margin = fig.layout.margin  # margins the figure sets, in pixels, are kept: its geometry is drawn as designed
    left = margin.l / width if margin.l is not None else left
    right = 1 - margin.r / width if margin.r is not None else right
    bottom = margin.b / height if margin.b is not None else bottom
    top = 1 - margin.t / height if margin.t is not None else top
    if title:
        canvas.suptitle(title, fontsize=11, x=left, ha="left", y=0.995)

    axes: dict[tuple[str, str], Any] = {}
    categories: dict[str, _Categories] = {}
    bars = _BarLayout(fig)
    for index, trace in enumerate(fig.data):
        if trace.type not in ("heatmap", "bar", "box", "scatter"):
            raise UnsupportedFigure(f"{trace.type} traces are not drawn as static images")
        xname, yname = _axis_names(trace)
        if (xname, yname) not in axes:
            xdomain = _layout_axis(fig, xname, "x").domain or (0, 1)
            ydomain = _layout_axis(fig, yname, "y").domain or (0, 1)
            x0, x1 = left + (right - left) * xdomain[0], left + (right - left) * xdomain[1]
            y0, y1 = bottom + (top - bottom) * ydomain[0], bottom + (top - bottom) * ydomain[1]
            axes[(xname, yname)] = canvas.add_axes((x0, y0, x1 - x0, y1 - y0))
        ax = axes[(xname, yname)]
        cx = categories.setdefault(xname, _Categories())
        cy = categories.setdefault(yname, _Categories())
        _draw(canvas, ax, trace, cx, cy, bars, index, _default_color(fig, index))

    for (xname, yname), ax in axes.items():
        _style_axes(ax, _layout_axis(fig, xname, "x"), _layout_axis(fig, yname, "y"), categories[xname], categories[yname])
    _draw_shapes(fig, axes, categories)
    _legend(fig, axes)
    _draw_annotations(fig, canvas, axes, categories, (left, right, bottom, top))
    return canvas


_PLOTLY_COLORWAY = ("#636efa", "#EF553B", "#00cc96", "#ab63fa", "#FFA15A", "#19d3f3", "#FF6692", "#B6E880",
                    "#FF97FF", "#FECB52")  # plotly's default template's, for a figure without a template


def _default_color(fig: Any, index: int) -> str:
    """The colour plotly gives trace ``index`` when the trace sets none: the layout's colour way, else the
    template's, by trace order."""
    template = fig.layout.template.layout if fig.layout.template is not None else None
    colorway = fig.layout.colorway or (template.colorway if template is not None else None) or _PLOTLY_COLORWAY
    return colorway[index % len(colorway)]


class _BarLayout:
    """Where each bar trace stands, as plotly's ``barmode`` lays them out: side by side within each
    category (``group``, plotly's default), on top of each other (``stack``; ``relative`` stacks
    negative values down from zero), or in front of each other (``overlay``). Bars take ``1 - bargap``
    of a category; a group shares it between its traces."""

    def __init__(self, fig: Any) -> None:
        self.mode = fig.layout.barmode or "group"
        if self.mode not in ("group", "stack", "relative", "overlay"):
            raise UnsupportedFigure(f"barmode {self.mode!r} is not drawn as a static image")
        self.width = 1.0 - (fig.layout.bargap if fig.layout.bargap is not None else 0.2)
        self.groups: dict[tuple[str, str], list[int]] = {}
        for index, trace in enumerate(fig.data):
            if trace.type == "bar":
                self.groups.setdefault(_axis_names(trace), []).append(index)
        self.tops: dict[tuple[tuple[str, str], float, bool], float] = {}  # stacked so far, per x (and sign)

    def place(self, index: int, trace: Any, xs: Sequence[float], ys: Sequence[float]
              ) -> tuple[list[float], float, list[float]]:
        """The centres, the width and the bottoms of the bars of trace ``index`` (drawn in trace order)."""
        axes = _axis_names(trace)
        group = self.groups[axes]
        if self.mode != "group" or len(group) == 1:
            centres, width = list(xs), self.width
        else:
            width = self.width / len(group)
            centres = [x - self.width / 2 + width * (group.index(index) + 0.5) for x in xs]
        bottoms = [0.0] * len(xs)
        if self.mode in ("stack", "relative"):
            for i, (x, y) in enumerate(zip(xs, ys)):
                key = (axes, x, self.mode == "relative" and y < 0)
                bottoms[i] = self.tops.get(key, 0.0)
                self.tops[key] = bottoms[i] + y
        return centres, width, bottoms


def _bottom_margin(fig: Any, height: int) -> float:
    """Room under the lowest panels for their tick labels (slanted when long) and axis title."""
    longest = 0
    for trace in fig.data:
        values = trace.x if trace.type != "box" else [trace.name]
        if values is not None and not all(isinstance(v, (int, float)) for v in values):
            longest = max(longest, *(len(str(v)) for v in values))
    pixels = 60 + (6.0 * min(longest, 30) * 0.75 if longest > 3 else 0)
    return min(0.45, max(0.1, pixels / height))


def _draw(canvas: Any, ax: Any, trace: Any, cx: _Categories, cy: _Categories, bars: _BarLayout, index: int,
          color: str) -> None:
    if trace.type == "heatmap":
        _heatmap(canvas, ax, trace, cx, cy)
    elif trace.type == "bar":
        _bar(ax, trace, cx, bars, index, color)
    elif trace.type == "box":
        values = list(trace.y or [])
        position = cx.positions([trace.name or ""])[0]
        edge = _plotly_color(trace.marker.color if trace.marker is not None and isinstance(trace.marker.color, str)
                             else color)
        ax.boxplot([values], positions=[position], widths=0.6, showfliers=True, patch_artist=True,  # named by its x tick
                   boxprops={"facecolor": (*edge[:3], 0.5), "edgecolor": edge}, medianprops={"color": edge},
                   whiskerprops={"color": edge}, capprops={"color": edge}, flierprops={"markeredgecolor": edge})
    else:
        _scatter(ax, trace, cx, cy, color)


def _heatmap(canvas: Any, ax: Any, trace: Any, cx: _Categories, cy: _Categories) -> None:
    # deferred: matplotlib loads only when a PNG is drawn (the runner imports this module for every notebook)
    import numpy as np

    z = np.array([[np.nan if v is None else float(v) for v in row] for row in trace.z], dtype=float)
    n_rows, n_cols = z.shape
    xs = cx.positions(list(trace.x) if trace.x is not None else list(range(n_cols)))
    ys = cy.positions(list(trace.y) if trace.y is not None else list(range(n_rows)))
    vmin, vmax = trace.zmin, trace.zmax
    if trace.zmid is not None and (vmin is None or vmax is None):
        bound = float(np.nanmax(np.abs(z - trace.zmid))) or 1.0
        vmin, vmax = trace.zmid - bound, trace.zmid + bound
    extent = (min(xs) - 0.5, max(xs) + 0.5, min(ys) - 0.5, max(ys) + 0.5)  # row 0 at the bottom, as in plotly
    if not cx.labels:
        cx.cells.update(xs)
    if not cy.labels:
        cy.cells.update(ys)
    image = ax.imshow(z, cmap=_colormap(trace.colorscale), vmin=vmin, vmax=vmax, aspect="auto",
                      interpolation="nearest", extent=extent, origin="lower")
    ax.heatmap = True
    if trace.showscale is not False:  # in the right margin, as plotly draws it, not taken from the panel
        box = ax.get_position()
        bar_axes = canvas.add_axes((COLORBAR_X, box.y0, 0.014, box.height))
        bar = canvas.colorbar(image, cax=bar_axes)
        bar.ax.tick_params(labelsize=8)
        title = trace.colorbar.title.text if trace.colorbar and trace.colorbar.title else None
        if title:
            bar.set_label(_text(title), fontsize=9)


def _colors(marker: Any, default: str) -> Any:
    color = marker.color if marker is not None else None
    if color is None:
        return _plotly_color(default)
    if isinstance(color, str):
        return color
    color = list(color)
    if all(isinstance(c, str) for c in color):
        return [_plotly_color(c) for c in color]
    if marker.colorscale is not None:
        cmap = _colormap(marker.colorscale)
        low, high = (marker.cmin, marker.cmax) if marker.cmin is not None else (min(color), max(color))
        span = (high - low) or 1.0
        return [cmap((c - low) / span) for c in color]
    return _plotly_color(default)


def _plotly_color(color: str) -> Any:
    # deferred: matplotlib loads only when a PNG is drawn (the runner imports this module for every notebook)
    from matplotlib.colors import to_rgba

    if color.startswith("rgb"):
        parts = [p.strip() for p in color[color.index("(") + 1 : color.index(")")].split(",")]
        rgb = tuple(float(p) / 255 for p in parts[:3])
        return (*rgb, float(parts[3]) if len(parts) > 3 else 1.0)
    return to_rgba(color)


def _bar(ax: Any, trace: Any, cx: _Categories, bars: _BarLayout, index: int, color: str) -> None:
    if trace.orientation == "h":
        raise UnsupportedFigure("horizontal bars are not drawn as static images")
    xs = cx.positions(list(trace.x) if trace.x is not None else list(range(len(trace.y))))
    ys = [0.0 if v is None else float(v) for v in trace.y]
    centres, width, bottoms = bars.place(index, trace, xs, ys)
    error = _error_y(trace)
    ax.bar(centres, ys, width=width, bottom=bottoms, color=_colors(trace.marker, color), yerr=error,
           capsize=3 if error else 0, ecolor="#444444", label=_label(trace))
    if trace.text is not None and not isinstance(trace.text, str):
        for x, y, bottom, label in zip(centres, ys, bottoms, trace.text):
            ax.annotate(_text(label), (x, bottom + y), textcoords="offset points", xytext=(0, 3 if y >= 0 else -10),
                        ha="center", fontsize=8 if len(centres) * len(_text(label)) < 120 else 6)


def _error_y(trace: Any) -> list[list[float]] | None:
    """Matplotlib's ``yerr`` (below, above) from a trace's plotly error bars, or None."""
    if trace.error_y is None or trace.error_y.array is None:
        return None
    upper = [float(v) for v in trace.error_y.array]
    lower = [float(v) for v in trace.error_y.arrayminus] if trace.error_y.arrayminus is not None else upper
    return [lower, upper]


def _label(trace: Any) -> str | None:
    return _text(trace.name) if trace.name and trace.showlegend is not False else None


def _scatter(ax: Any, trace: Any, cx: _Categories, cy: _Categories, color: str) -> None:
    ys_raw = list(trace.y) if trace.y is not None else []
    xs_raw = list(trace.x) if trace.x is not None else list(range(len(ys_raw)))
    drawn = [i for i, (x, y) in enumerate(zip(xs_raw, ys_raw)) if x is not None and y is not None]
    # a trace of None points only names something in the legend (plotly's idiom): drawn empty, for its handle
    xs = cx.positions([xs_raw[i] for i in drawn]) if drawn else []
    ys = cy.positions([ys_raw[i] for i in drawn]) if drawn else []
    mode = trace.mode or "lines+markers"
    style: dict[str, Any] = {"color": _plotly_color(trace.line.color if trace.line is not None and trace.line.color
                                                    else trace.marker.color if trace.marker is not None
                                                    and isinstance(trace.marker.color, str) else color)}
    if trace.line is not None and trace.line.dash in ("dash", "dot"):
        style["linestyle"] = "--" if trace.line.dash == "dash" else ":"
    if "lines" in mode:
        width = float(trace.line.width) if trace.line is not None and trace.line.width else 1.5
        ax.plot(xs, ys, marker="o" if "markers" in mode else None, markersize=4, linewidth=width, label=_label(trace),
                **style)
    elif "markers" in mode:
        size = trace.marker.size if trace.marker is not None and isinstance(trace.marker.size, (int, float)) else 7
        symbol = "D" if trace.marker is not None and trace.marker.symbol == "diamond" else "o"
        colors = _colors(trace.marker, color)
        ax.scatter(xs, ys, **({"c": colors} if isinstance(colors, list) else {"color": colors}),
                   s=(size * 72 / DPI) ** 2,  # plotly's size is the marker's diameter in pixels
                   marker=symbol, zorder=3, label=_label(trace))
    error = _error_y(trace)
    if error is not None:
        ax.errorbar(xs, ys, yerr=error, fmt="none", ecolor="#444444", capsize=3, zorder=2)
    if "text" in mode and trace.text is not None and not isinstance(trace.text, str):
        texts = [trace.text[i] for i in drawn]
        font = trace.textfont.size if trace.textfont is not None and trace.textfont.size else 11
        size = 0.0 if "markers" not in mode else (trace.marker.size if trace.marker is not None and isinstance(
            trace.marker.size, (int, float)) else 7)
        vertical, _, horizontal = (trace.textposition or "top center").partition(" ")
        # beside the marker as plotly puts it: offsets in points, from the marker's edge (size in pixels)
        reach = size * 72 / DPI / 2 + 2
        dx = {"left": -reach, "center": 0.0, "right": reach}.get(horizontal, 0.0)
        dy = {"top": reach if horizontal == "center" else 0.0, "middle": 0.0,
              "bottom": -reach if horizontal == "center" else 0.0}.get(vertical, 0.0)
        ha = {"left": "right", "right": "left"}.get(horizontal, "center")
        va = {"top": "bottom", "bottom": "top"}.get(vertical, "center") if horizontal == "center" else "center"
        halo = {}
        if trace.textfont is not None and trace.textfont.shadow and "white" in str(trace.textfont.shadow):
            # deferred: matplotlib loads only when a PNG is drawn (the runner imports this module for every notebook)
            from matplotlib import patheffects

            halo = {"path_effects": [patheffects.withStroke(linewidth=3, foreground="white")]}
        for x, y, label in zip(xs, ys, texts):
            ax.annotate(_text(label), (x, y), textcoords="offset points", xytext=(dx, dy), ha=ha, va=va,
                        fontsize=font * 72 / DPI, zorder=4, **halo)  # over lines, as plotly draws a trace's text


def _style_axes(ax: Any, xaxis: Any, yaxis: Any, cx: _Categories, cy: _Categories) -> None:
    for axis, letter, cats in ((xaxis, "x", cx), (yaxis, "y", cy)):
        if axis.title and axis.title.text:
            (ax.set_xlabel if letter == "x" else ax.set_ylabel)(_text(axis.title.text), fontsize=9)
        positions: list[float] | None = None
        labels: list[str] = []
        if axis.tickmode == "array" and axis.tickvals is not None:
            positions = [float(v) for v in cats.positions(list(axis.tickvals))]
            labels = [_text(t) for t in (axis.ticktext or axis.tickvals)]
        elif cats.labels:
            positions, labels = [float(i) for i in range(len(cats.labels))], list(cats.labels)
        elif cats.cells and len(cats.cells) <= 64:  # every layer and head labelled, no fractional ticks
            positions = sorted(cats.cells)
            labels = [f"{v:g}" for v in positions]
        if positions is None:
            ax.tick_params(axis=letter, labelsize=8)
            if cats.integers and letter == "x" and not cats.labels:
                # deferred: matplotlib loads only when a PNG is drawn (the runner imports this module for every notebook)
                from matplotlib.ticker import MaxNLocator

                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        elif letter == "x":
            crowded = len(labels) > 8 and max((len(t) for t in labels), default=0) > 3
            rotation = -(axis.tickangle or 0) or (45 if crowded else 0)
            ax.set_xticks(positions, labels, rotation=rotation, fontsize=8 if len(labels) <= 24 else 6,
                          ha="right" if rotation else "center", rotation_mode="anchor")
        else:
            ax.set_yticks(positions, labels, fontsize=8 if len(labels) <= 24 else 6)
        if axis.autorange == "reversed":
            (ax.invert_xaxis if letter == "x" else ax.invert_yaxis)()
        if axis.range is not None:
            (ax.set_xlim if letter == "x" else ax.set_ylim)(*axis.range)
    if not getattr(ax, "heatmap", False):
        ax.grid(axis="y", color="#eeeeee", linewidth=0.6)
        ax.set_axisbelow(True)


def _legend(fig: Any, axes: dict[tuple[str, str], Any]) -> None:
    """A legend of the named traces, as plotly shows one (more than one named trace, not switched off)."""
    if fig.layout.showlegend is False or not axes:
        return
    named = [t for t in fig.data if t.name and t.showlegend is not False and t.type != "heatmap"]
    if len(named) < 2:
        return
    handles, labels = [], []
    for ax in axes.values():
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    if not handles:
        return
    legend = fig.layout.legend
    if legend.y is not None and legend.y < 0:  # under the plot, as plotly puts it: clear of what is drawn
        ax = next(iter(axes.values()))
        ax.legend(handles, labels, fontsize=8, frameon=False, loc="upper left", bbox_transform=ax.transAxes,
                  bbox_to_anchor=(legend.x if legend.x is not None else 0.0, legend.y),  # fractions of the plot area
                  ncol=min(len(labels), 5) if legend.orientation == "h" else 1)
    else:
        next(iter(axes.values())).legend(handles, labels, fontsize=8, loc="best", frameon=False)


def _line_style(line: Any) -> dict[str, Any]:
    style: dict[str, Any] = {"color": "#888888", "linewidth": 1.0}
    if line is not None:
        if line.color:
            style["color"] = _plotly_color(line.color)
        if line.dash in ("dash", "dot"):
            style["linestyle"] = "--" if line.dash == "dash" else ":"
    return style


def _axes_of(axes: dict[tuple[str, str], Any], xref: str, yref: str) -> Any:
    xname, yname = xref.split(" ")[0], yref.split(" ")[0]
    for (x, y), ax in axes.items():
        if (xname in (x, "paper")) and (yname in (y, "paper")):
            return ax
    return next(iter(axes.values()), None)


def _draw_shapes(fig: Any, axes: dict[tuple[str, str], Any], categories: dict[str, _Categories]) -> None:
    for shape in fig.layout.shapes or ():
        if shape.type != "line":
            raise UnsupportedFigure(f"{shape.type} shapes are not drawn as static images")
        ax = _axes_of(axes, shape.xref or "x", shape.yref or "y")
        if ax is None:
            continue
        style = _line_style(shape.line)
        if (shape.xref or "").endswith("domain") or shape.xref == "paper":
            ax.axhline(float(shape.y0), **style)
        else:
            ax.axvline(float(shape.x0), **style)


def _draw_annotations(fig: Any, canvas: Any, axes: dict[tuple[str, str], Any], categories: dict[str, _Categories],
                      area: tuple[float, float, float, float]) -> None:
    left, right, bottom, top = area
    for note in fig.layout.annotations or ():
        text = _text(note.text)
        if not text:
            continue
        xref, yref = note.xref or "x", note.yref or "y"
        if xref == "paper" and yref == "paper":  # a subplot title
            x = left + (right - left) * float(note.x)
            y = bottom + (top - bottom) * float(note.y)
            canvas.text(x, y + 0.005, text, ha="center", va="bottom", fontsize=9)
            continue
        ax = _axes_of(axes, xref, yref)
        if ax is None:
            continue
        transform = ax.get_yaxis_transform() if xref.endswith("domain") else (
            ax.get_xaxis_transform() if yref.endswith("domain") else ax.transData)
        ax.text(float(note.x), float(note.y), text, transform=transform, fontsize=8, color="#444444",
                ha="right" if (note.x or 0) > 0.5 else "left", va="bottom")
