"""How figures and attention views are stored in executed notebooks, chosen explicitly.

Plotly figures (:func:`configure_outputs`): each output holds the figure twice, as plotly's JSON mime
type (drawn interactively by JupyterLab's plotly extension and by VS Code, with no script to trust) and as
a static PNG (:mod:`helpers.figures.static`), which is what GitHub, nbviewer, nbconvert and Colab show, where
plotly.js does not run. No output loads a script from a CDN. The HTML export replaces both with the
figure and plotly.js embedded once per page (:mod:`helpers.run.export`).

Interactive attention views (CircuitsVis), rendered the one way we choose.

CircuitsVis's ``_repr_html_`` probes ``http://google.com`` on every render and then either inlines its
1.3 MB script or points at a CDN. We never let it decide: :func:`attention_view` renders the inline
(offline) source explicitly, so nothing probes the network and the executed notebook shows the view
without a connection. Before the view, the same heads are drawn as a static image with a one-line hint;
the view's script hides both when it runs, so a viewer that does not run it (an untrusted notebook,
GitHub) shows the image and says why. The view also carries its component name and props in the
output's metadata (``circuitsvis``), from which the HTML export re-renders it with the library embedded
once per page (:mod:`helpers.run.export`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from typing import Any

import plotly.io as pio
from circuitsvis.utils.render import convert_props, render_local
from IPython.display import Markdown, display

from helpers.analyses.dla import AttentionPatterns
from helpers.figures.dla import plot_attention_patterns
from helpers.figures.images import (
    CIRCUITSVIS_METADATA,
    PENDING_FIGURE_METADATA,
    PENDING_PNG,
    STATIC_IMAGES_BY_RUNNER,
    StaticImageRenderer,
)
from helpers.figures.static import png

PLOTLY_RENDERERS = "plotly_mimetype+suite_static_png"
UNTRUSTED_HINT = ("A static image of the interactive attention view, whose script did not run here: trust the "
                  "notebook (JupyterLab: File > Trust Notebook) or open its HTML page to explore it.")


def configure_outputs() -> None:
    """Store every plotly figure as its JSON mime type plus a static PNG (see the module doc); in the
    runner's kernels the JSON alone, the runner adding the PNG (:func:`helpers.figures.images.add_static_images`)."""


    pio.renderers["suite_static_png"] = StaticImageRenderer()
    pio.renderers.default = "plotly_mimetype" if os.environ.get(STATIC_IMAGES_BY_RUNNER) == "1" else PLOTLY_RENDERERS


class CircuitsVisView:
    """A CircuitsVis component with its props; Jupyter displays it through :meth:`_repr_mimebundle_`."""

    def __init__(self, component: str, *, static_png: bytes | None = None, static_figure: dict[str, Any] | None = None,
                 **props: Any):
        """``static_png``: the image shown where the view's script does not run; or ``static_figure``, a
        plotly figure's dict whose image the runner draws into the executed notebook (:data:`PENDING_PNG`)."""

        self.component = component
        self.props_json = convert_props({k: v for k, v in props.items() if v is not None})
        self._props = props
        self.static_png = static_png
        self.static_figure = static_figure

    def html(self) -> str:
        """Self-contained HTML: the static image and its hint (when there is one), the library inlined,
        then the render call, then a line of script that hides the image once scripts run."""

        view = render_local(self.component, **{k: v for k, v in self._props.items() if v is not None})
        if self.static_png is None and self.static_figure is None:
            return view
        image = PENDING_PNG if self.static_png is None else base64.b64encode(self.static_png).decode("ascii")
        element = f"suite-static-{hashlib.sha1(self.props_json.encode()).hexdigest()[:12]}"  # the same on every run
        fallback = (f'<div class="suite-static-view" id="{element}"><p><em>{UNTRUSTED_HINT}</em></p>'
                    f'<img alt="attention patterns" src="data:image/png;base64,{image}"></div>')
        hide = f'<script>document.getElementById("{element}").style.display = "none";</script>'
        return fallback + view + hide

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> tuple[dict[str, str], dict[str, Any]]:
        metadata: dict[str, Any] = {CIRCUITSVIS_METADATA: {"component": self.component, "props": json.loads(self.props_json)}}
        if self.static_png is None and self.static_figure is not None:
            metadata[PENDING_FIGURE_METADATA] = self.static_figure
        return {"text/html": self.html()}, metadata


def attention_view(result: AttentionPatterns) -> CircuitsVisView:
    """An interactive view of the heads' attention patterns on one prompt."""


    figure = plot_attention_patterns(result)
    # as a plotly figure's output carries it (plotly's JSON, which the runner's images are drawn from)
    image: dict[str, Any] = ({"static_figure": json.loads(figure.to_json())}
                             if os.environ.get(STATIC_IMAGES_BY_RUNNER) == "1" else {"static_png": png(figure)})
    return CircuitsVisView("AttentionHeads", **image, attention=result.patterns, tokens=list(result.str_tokens),
                           attentionHeadNames=list(result.head_names), maskUpperTri=True)


def show_warning(text: str | None) -> None:
    """Display ``text`` as a warning block above the figure it is about (nothing when ``text`` is None)."""
    if text:

        display(Markdown(f"> **Warning.** {text}"))
