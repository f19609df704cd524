"""The figures' static images in executed notebooks, drawn by the runner beside the kernel.

Each plotly figure is stored as its JSON mime type and a PNG (:mod:`helpers.figures.viz`); an attention view carries
a PNG of the same heads for viewers that do not run its script. In the runner's kernels
(:data:`STATIC_IMAGES_BY_RUNNER`) the kernel leaves both out and goes on with the next template, and the
runner's worker adds them here (:func:`add_static_images`), as the kernel would have. Nothing here imports
torch: the worker is a process of its own beside the kernel.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from plotly.io._base_renderers import MimetypeRenderer

from helpers.figures.static import UnsupportedFigure, png

CIRCUITSVIS_METADATA = "circuitsvis"
PLOTLY_MIME = "application/vnd.plotly.v1+json"
# Set by the runner in its kernels: the figures' PNGs are drawn by the runner (add_static_images) while the
# kernel goes on with the next template, instead of by the kernel between its cells.
STATIC_IMAGES_BY_RUNNER = "SUITE_STATIC_IMAGES_BY_RUNNER"
# In the runner's kernels an attention view's static image is left for the runner too: the view's HTML holds
# this in place of the PNG's base64, and its output metadata the figure to draw (add_static_images).
PENDING_PNG = "SUITE-STATIC-PNG-PENDING"
PENDING_FIGURE_METADATA = "suite_static_figure"


class StaticImageRenderer(MimetypeRenderer):
    """Plotly renderer that adds the figure as a PNG (:func:`helpers.figures.static.png`) to the output."""

    def to_mimebundle(self, fig_dict: dict[str, Any]) -> dict[str, str]:

        try:
            data = _figure_png(fig_dict)
        except UnsupportedFigure as err:
            return {"text/plain": f"(interactive figure only: {err})"}
        return {"image/png": base64.b64encode(data).decode("ascii")}


def add_static_images(path: Any) -> int:
    """Give every plotly figure in the notebook at ``path`` that has none its static PNG (or the note
    saying why it has none), as the kernel's renderer would have; returns how many were added."""
    # deferred: the runner imports this module before any notebook exists; drawing needs these
    import nbformat

    notebook = nbformat.read(path, as_version=4)
    added = static_images_into(notebook)
    if added:
        nbformat.write(notebook, path)
    return added


def static_images_into(notebook: Any) -> int:
    """:func:`add_static_images` on a notebook read already (changed in place); how many were added. An
    attention view whose image was left to the runner (:data:`PENDING_PNG`) gets it here too. A figure shown
    twice (an attention view's image is the figure of the same heads beside it) is drawn once."""
    renderer, added = StaticImageRenderer(), 0
    drawn: dict[str, dict[str, str]] = {}

    def bundle_of(fig_dict: dict[str, Any]) -> dict[str, str]:
        key = json.dumps(fig_dict, sort_keys=True)
        if key not in drawn:
            drawn[key] = renderer.to_mimebundle(fig_dict)
        return drawn[key]

    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if PLOTLY_MIME in data and "image/png" not in data:
                data.update({key: value for key, value in bundle_of(data[PLOTLY_MIME]).items() if key not in data})
                added += 1
            pending = output.get("metadata", {}).pop(PENDING_FIGURE_METADATA, None)
            if pending is not None:
                image = bundle_of(pending).get("image/png", "")
                data["text/html"] = "".join(data["text/html"]).replace(PENDING_PNG, image)
                added += 1
    return added


def _figure_png(fig_dict: dict[str, Any]) -> bytes:
    # deferred: the runner imports this module before any notebook exists; drawing needs these
    import plotly.graph_objects as go


    # the dict is plotly's own output, valid already: validating it again took most of the time of a
    # heatmap's image (the figure and the PNG are the same either way)
    return png(go.Figure(fig_dict, _validate=False))
