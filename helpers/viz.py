"""How figures and attention views are stored in executed notebooks, chosen explicitly.

Plotly figures (:func:`configure_outputs`): each output holds the figure twice, as plotly's JSON mime
type (rendered by JupyterLab's plotly extension and by VS Code, with no script to trust) and as HTML that
loads plotly.js from its CDN (Colab, nbconvert, GitHub-style viewers). The HTML export replaces both
with the figure and plotly.js embedded once per page (:mod:`helpers.export`).

Interactive attention views (CircuitsVis), rendered the one way we choose.

CircuitsVis's ``_repr_html_`` probes ``http://google.com`` on every render and then either inlines its
1.3 MB script or points at a CDN. We never let it decide: :func:`attention_view` renders the inline
(offline) source explicitly, so nothing probes the network and the executed notebook shows the view
without a connection. The view also carries its component name and props in the output's metadata
(``circuitsvis``), from which the HTML export re-renders it with the library embedded once per page
(:mod:`helpers.export`).
"""

from __future__ import annotations

import json
from typing import Any

from helpers.attribution import AttentionPatterns

CIRCUITSVIS_METADATA = "circuitsvis"
PLOTLY_RENDERERS = "plotly_mimetype+suite_connected_html"


def configure_outputs() -> None:
    """Store every plotly figure as its JSON mime type plus CDN-loading HTML (see the module doc)."""
    import plotly.io as pio
    from plotly.io._base_renderers import HtmlRenderer

    pio.renderers["suite_connected_html"] = HtmlRenderer(connected=True, full_html=False)
    pio.renderers.default = PLOTLY_RENDERERS


class CircuitsVisView:
    """A CircuitsVis component with its props; Jupyter displays it through :meth:`_repr_mimebundle_`."""

    def __init__(self, component: str, **props: Any):
        from circuitsvis.utils.render import convert_props

        self.component = component
        self.props_json = convert_props({k: v for k, v in props.items() if v is not None})
        self._props = props

    def html(self) -> str:
        """Self-contained HTML: the library inlined, then the render call."""
        from circuitsvis.utils.render import render_local

        return render_local(self.component, **{k: v for k, v in self._props.items() if v is not None})

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> tuple[dict[str, str], dict[str, Any]]:
        metadata = {CIRCUITSVIS_METADATA: {"component": self.component, "props": json.loads(self.props_json)}}
        return {"text/html": self.html()}, metadata


def attention_view(result: AttentionPatterns) -> CircuitsVisView:
    """An interactive view of the heads' attention patterns on one prompt."""
    return CircuitsVisView("AttentionHeads", attention=result.patterns, tokens=list(result.str_tokens),
                           attentionHeadNames=list(result.head_names), maskUpperTri=True)
