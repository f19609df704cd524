"""The contrast every causal analysis measures: a task's clean prompts against their corrupted versions.

Patching (:mod:`helpers.analyses.patching`), the graph of edges (:mod:`helpers.analyses.circuits.edge_runs`) and
circuit evaluation (:mod:`helpers.analyses.circuits.head_circuits`) each run the model their own way, but
they start from the same things, which live here once: the two prompt sets and the answers on the
model's device, the first position where the prompts differ (nothing before it can change), and how
small a difference in the task's metric is too small to normalise by.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from helpers.tasks.metrics import AnswerMetric
from helpers.tasks.prompts import PromptSet

# A difference in the task metric's mean below this (clean against corrupted, or the full model against 0)
# makes a normalised metric, a fraction of it, mostly noise. ``given``: a metric the caller wrote.
SMALL_GAP = {"logit_diff": 0.1, "prob_diff": 0.01, "given": 0.1}


@dataclass(frozen=True)
class Contrast:
    """A task's clean and corrupted prompts, their final positions and answers, on ``device``."""

    prompts: PromptSet
    clean_tokens: Int[Tensor, "batch pos"]
    corrupted_tokens: Int[Tensor, "batch pos"]
    final_pos: Int[Tensor, " batch"]
    answers: AnswerMetric

    @classmethod
    def on(cls, prompts: PromptSet, device: Any) -> Contrast:
        return cls(prompts, prompts.clean_tokens.to(device), prompts.corrupted_tokens.to(device),
                   prompts.final_pos.to(device), prompts.metric.to(device))

    @functools.cached_property
    def first_difference(self) -> int:
        """The first position where any clean prompt differs from its corrupted version (the width if none)."""
        differs = (self.clean_tokens != self.corrupted_tokens).any(dim=0).nonzero()
        return int(differs[0]) if len(differs) else self.clean_tokens.shape[1]

    @property
    def small_gap(self) -> float:
        """The smallest difference in the task's metric worth normalising by (:data:`SMALL_GAP`)."""
        return SMALL_GAP[self.answers.kind]

    def require_difference(self) -> None:
        """Raise if the corruption changed no prompt: there would be nothing to patch."""
        if torch.equal(self.clean_tokens, self.corrupted_tokens):
            raise ValueError("the clean and corrupted prompts are identical: there is nothing to patch. "
                             "Fix: give the task a corruption that changes the prompts.")
