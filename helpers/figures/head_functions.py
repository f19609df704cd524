"""Figures of the heads' functions on repeated random tokens and of head ablation
(:mod:`helpers.analyses.head_functions`, :mod:`helpers.analyses.head_ablation`).
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import plotly.graph_objects as go

from helpers.analyses.head_ablation import AblationResult
from helpers.analyses.head_functions import ROLE_NAMES, ROLES, HeadRoleScores
from helpers.analyses.important_heads import ImportantHead
from helpers.figures.heads import head_scatter, plot_head_heatmap


def plot_role_scores(scores: HeadRoleScores, role: str) -> go.Figure:
    return plot_head_heatmap(
        scores.scores[role].tolist(), f"{ROLE_NAMES[role].capitalize()} score per head "
        f"({scores.batch} repeated random sequences of {scores.seq_len} tokens)", colorbar_title="score",
        unit_interval=True)


def role_score_table(scores: HeadRoleScores, k: int) -> pd.DataFrame:
    """The top ``k`` heads for each role, side by side: a role with fewer heads above 0 than another has
    blank rows at the bottom of its columns."""
    tops = {role: scores.top(role, k) for role in ROLES}
    rows = max((len(top) for top in tops.values()), default=0)
    columns: dict[str, list[object]] = {}
    for role, top in tops.items():
        blank = [None] * (rows - len(top))
        columns[f"{ROLE_NAMES[role]} head"] = [h.name for h in top] + blank
        columns[f"{ROLE_NAMES[role]} score"] = [h.value for h in top] + blank
    return pd.DataFrame(columns, index=pd.RangeIndex(1, rows + 1, name="rank"))


def heads_with_roles_table(heads: Sequence[ImportantHead], scores: HeadRoleScores) -> pd.DataFrame:
    """Important heads with their DLA, patching effect and score for each role."""
    rows = []
    for h in heads:
        rows.append({"head": h.name, "group": h.group, "DLA": h.dla, "output patching": h.patching,
                     **{ROLE_NAMES[role]: value for role, value in scores.of(h.layer, h.head).items()}})
    return pd.DataFrame(rows).set_index("head") if rows else pd.DataFrame()


def ablation_table(result: AblationResult) -> pd.DataFrame:
    return pd.DataFrame({
        "value": [float(result.logit_diff_before.mean()), float(result.logit_diff_after.mean()),
                  float(result.predicted_after.mean()), float(result.scale_ratio.mean()), result.compensation],
    }, index=pd.Index(["logit difference before", "logit difference after", "after, as the head's DLA predicted",
                       "final LayerNorm scale, after / before", "share of the predicted drop made up"], name=""))


def plot_ablation_dla(result: AblationResult) -> go.Figure:
    """Each head's DLA after the ablation against before: off-diagonal heads changed behaviour."""
    return head_scatter(result.dla_before, result.dla_after, x_title="DLA before", y_title="DLA after",
                        title=f"DLA per head after {result.method}-ablating {result.head.name} vs before")
