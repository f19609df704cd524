"""Interactive attention views (CircuitsVis), rendered the one way we choose.

CircuitsVis's ``_repr_html_`` probes ``http://google.com`` on every render and then either inlines its
1.3 MB script or points at a CDN. We never let it decide: :func:`attention_view` takes the inline
(offline) source explicitly and hands Jupyter plain HTML, so nothing probes the network and the
executed notebook shows the view without a connection.
"""

from __future__ import annotations

from IPython.display import HTML

from helpers.attribution import AttentionPatterns


def attention_view_html(result: AttentionPatterns) -> str:
    """Self-contained HTML for an interactive view of the heads' patterns on the prompt."""
    import circuitsvis as cv

    rendered = cv.attention.attention_heads(
        attention=result.patterns, tokens=list(result.str_tokens), attention_head_names=result.head_names
    )
    return rendered.local_src


def attention_view(result: AttentionPatterns) -> HTML:
    """The interactive view, ready to display in a notebook cell."""
    return HTML(attention_view_html(result))
