"""Figures of copy scores (:mod:`helpers.analyses.copy_scores`).
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import plotly.graph_objects as go
from IPython.display import Markdown, display

from helpers.analyses.copy_scores import AttentionProjection, CopyPredictions, CopyScores, SuccessorScores
from helpers.analyses.heads import HeadScore
from helpers.figures.heads import plot_head_heatmap, ranked_columns


def plot_copy_scores(scores: CopyScores, *, negative: bool = False) -> go.Figure:
    kind = "Negative copy" if negative else "Copy"
    return plot_head_heatmap(
        scores.scores(negative=negative).tolist(),
        f"{kind} score per head: share of {len(scores.inputs)} words whose token is in the top {scores.k}",
        colorbar_title="score", unit_interval=True)


def copy_score_table(scores: CopyScores, k: int) -> pd.DataFrame:
    """The top ``k`` copying and negative copying heads, side by side (only heads above 0% are listed, so
    one side may be shorter: its rows are left empty)."""
    copying, negative = scores.top(k), scores.top(k, negative=True)
    return ranked_columns({
        "copying head": [h.name for h in copying], "copy score": [h.value for h in copying],
        "negative head": [h.name for h in negative], "negative copy score": [h.value for h in negative],
    })


def copy_scores_by_role_table(scores: CopyScores, heads: Sequence[HeadScore], *, negative: bool = False) -> pd.DataFrame:
    """Each head's score over the words of each role (placeholder) alone."""
    rows = [{"head": name, **values} for name, values in scores.by_role_of(heads, negative=negative).items()]
    return pd.DataFrame(rows).set_index("head") if rows else pd.DataFrame()


def copy_predictions_table(predictions: Sequence[CopyPredictions]) -> pd.DataFrame:
    """For each head and input, the head's top tokens, and whether the input's own token is among them."""
    rows = [{"head": p.head.name, "input": text, "top tokens": " | ".join(repr(t) for t in top), "input in top": copied}
            for p in predictions for text, top, copied in zip(p.inputs, p.top_tokens, p.copied)]
    return pd.DataFrame(rows).set_index(["head", "input"]) if rows else pd.DataFrame()


def plot_attention_vs_projection(result: AttentionProjection) -> go.Figure:
    """Attention from the final position to each word against the head's output on that word, by role."""
    fig = go.Figure()
    attention, projection = result.attention.tolist(), result.projection.tolist()
    for role in dict.fromkeys(result.roles):
        idx = [i for i, r in enumerate(result.roles) if r == role]
        fig.add_trace(go.Scatter(
            x=[attention[i] for i in idx], y=[projection[i] for i in idx], mode="markers", name=role,
            text=[f"{result.words[i]!r} in prompt {result.prompt_index[i]}" for i in idx],
            hovertemplate="%{text}<br>attention %{x:.3f}<br>projection %{y:.3f}<extra>" + role + "</extra>"))
    fig.add_hline(y=0, line_color="lightgray")
    fig.update_layout(
        title=f"{result.head.name}: attention vs output on each word (Pearson r = {result.pearson_r:.3f}, "
        f"p = {result.p_value:.2g}, {len(attention)} points)",
        xaxis_title="attention from the final position to the word",
        yaxis_title="head output \u00b7 the word's unembedding", legend_title="word role")
    return fig


def attention_projection_table(results: Sequence[AttentionProjection], scores: CopyScores) -> pd.DataFrame:
    rows = [{"head": r.head.name, "Pearson r": r.pearson_r, "p-value": r.p_value, "points": len(r.roles),
             "copy score": float(scores.copy[r.head.layer, r.head.head]),
             "negative copy score": float(scores.negative[r.head.layer, r.head.head])} for r in results]
    return pd.DataFrame(rows).set_index("head") if rows else pd.DataFrame()


def plot_successor_scores(scores: SuccessorScores) -> go.Figure:
    lists = ", ".join(dict.fromkeys(scores.pairs.list_name))
    return plot_head_heatmap(
        scores.values.tolist(),
        f"Successor score per head: share of {len(scores.pairs)} words of {lists} whose next word comes first",
        colorbar_title="score", unit_interval=True)


def successor_table(scores: SuccessorScores, k: int) -> pd.DataFrame:
    """The top ``k`` successor heads (above 0%), with the pairs each puts in order."""
    rows = []
    for h in scores.top(k):
        first = scores.first[h.layer, h.head]
        shown = [f"{a}->{b}" for (a, b), hit in zip(scores.pairs.words, first.tolist()) if hit]
        rows.append({"head": h.name, "successor score": h.value,
                     "next word first for": ", ".join(shown[:6]) + (f", ... ({len(shown)})" if len(shown) > 6 else "")})
    return pd.DataFrame(rows).set_index("head") if rows else pd.DataFrame()


def show_successor_scores(scores: SuccessorScores | None, k: int) -> None:
    """The successor scores' heatmap and top heads, or why the task has none."""
    if scores is None:
        display(Markdown("The task has no ordered word list (no placeholder used with an offset, such as "
                         "`[M+1]`), so no head is scored as a successor head."))
        return
    if scores.pairs.not_single_tokens:
        display(Markdown("Left out, more than one token: " + ", ".join(scores.pairs.not_single_tokens) + "."))
    display(plot_successor_scores(scores))
    display(successor_table(scores, k))
