"""Which heads matter for the task, and where they sit in the model.

The important heads come from the earlier notebooks of the same run (direct logit attribution and head
output patching, read from their results) or, when this notebook runs alone, are recomputed. They are
grouped by depth as a fraction of the model, so "early", "middle" and "late" mean the same in a
12-layer and a 48-layer model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from helpers.analyses.dla import FinalPositionCache, compute_head_attribution, run_final_position_cache
from helpers.analyses.heads import Head, HeadScore, rank_heads, rank_heads_by_magnitude
from helpers.analyses.patching.engine import PatchingEngine
from helpers.results import read_section
from helpers.tasks.prompts import PromptSet

DEPTH_GROUPS = ("early", "middle", "late")


@dataclass(frozen=True)
class HeadImportance:
    """Per-head DLA and output-patching effect, and where they came from."""

    dla: Float[Tensor, "layer head_index"]
    patching: Float[Tensor, "layer head_index"]
    source: str


@dataclass(frozen=True)
class ImportantHead(Head):
    """A head important to the task, with its DLA and output patching and its depth group."""

    dla: float
    patching: float
    depth: float  # (layer + 0.5) / n_layers
    group: str

    def to_dict(self) -> dict[str, Any]:
        return {**self.identity(), "dla": self.dla, "patching": self.patching, "group": self.group}


def compute_head_importance(
    model: Any, prompts: PromptSet, earlier: dict[str, Any], clean: FinalPositionCache | None = None
) -> HeadImportance:
    """DLA and head-output patching per head: from the earlier notebooks' results when there are some,
    else computed now (DLA from ``clean``, the clean run, when the notebook already has it)."""
    if "dla" in earlier and "patching" in earlier:
        return HeadImportance(torch.tensor(read_section(earlier["dla"], "dla", "heads", "mean")),
                              torch.tensor(read_section(earlier["patching"], "patching", "head_out", "values")),
                              "earlier notebooks of this run")
    dla = compute_head_attribution(model, clean if clean is not None else run_final_position_cache(model, prompts)).mean
    patching = PatchingEngine(model, prompts).patch("head_out").values
    return HeadImportance(dla, patching, "computed here (no earlier results in this run)")


def depth_group(layer: int, n_layers: int, boundaries: tuple[float, float]) -> str:
    """early / middle / late by ``(layer + 0.5) / n_layers`` against the two boundaries."""
    depth = (layer + 0.5) / n_layers
    return DEPTH_GROUPS[sum(depth >= b for b in boundaries)]


def important_heads(
    importance: HeadImportance, *, k: int, boundaries: tuple[float, float] = (1 / 3, 2 / 3)
) -> list[ImportantHead]:
    """The union of the top ``k`` heads by |DLA| and by |output patching|, ordered by their better rank
    in the two lists."""
    if not 0 < boundaries[0] < boundaries[1] < 1:
        raise ValueError(f"depth boundaries {boundaries} must satisfy 0 < early/middle < middle/late < 1")
    n_layers, n_heads = importance.dla.shape
    best_rank: dict[int, int] = {}
    for scores in (importance.dla, importance.patching):
        for rank, h in enumerate(rank_heads_by_magnitude(scores, k)):
            i = h.layer * n_heads + h.head
            best_rank[i] = min(rank, best_rank.get(i, rank))
    chosen = sorted(best_rank, key=lambda i: (best_rank[i], i))
    heads = [
        ImportantHead(i // n_heads, i % n_heads, float(importance.dla.flatten()[i]),
                      float(importance.patching.flatten()[i]), (i // n_heads + 0.5) / n_layers,
                      depth_group(i // n_heads, n_layers, boundaries))
        for i in chosen
    ]
    return heads


def group_by_depth(heads: list[ImportantHead]) -> dict[str, list[ImportantHead]]:
    return {group: [h for h in heads if h.group == group] for group in DEPTH_GROUPS}


def as_head_score(head: ImportantHead) -> HeadScore:
    """The head, labelled with its DLA (for figures that take :class:`HeadScore`)."""
    return HeadScore(head.layer, head.head, head.dla)


def top_head(importance: HeadImportance, *, by: str) -> HeadScore:
    """The head with the largest DLA (``by="dla"``) or output-patching effect (``by="patching"``)."""
    if by not in ("dla", "patching"):
        raise ValueError(f"ablate_by={by!r}: use 'dla' or 'patching'")
    return rank_heads(importance.dla if by == "dla" else importance.patching, 1)[0]
