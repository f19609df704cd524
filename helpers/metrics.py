"""Logit differences: the quantity every analysis of a task explains."""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor


def at_final_pos(
    activations: Float[Tensor, "batch pos *rest"], final_pos: Int[Tensor, " batch"]
) -> Float[Tensor, "batch *rest"]:
    """Each prompt's activation at its own final position (prompts are right-padded)."""
    rows = torch.arange(activations.shape[0], device=activations.device)
    return activations[rows, final_pos.to(activations.device)]


def answer_logit_diff(
    final_logits: Float[Tensor, "batch d_vocab"], answer_tokens: Int[Tensor, "batch 2"]
) -> Float[Tensor, " batch"]:
    """Correct minus incorrect answer logit, from each prompt's final-position logits."""
    answers = answer_tokens.to(final_logits.device)
    return final_logits.gather(-1, answers[:, :1]).squeeze(-1) - final_logits.gather(-1, answers[:, 1:]).squeeze(-1)


def logit_diff(
    logits: Float[Tensor, "batch pos d_vocab"],
    answer_tokens: Int[Tensor, "batch 2"],
    final_pos: Int[Tensor, " batch"],
) -> Float[Tensor, " batch"]:
    """Correct minus incorrect answer logit at each prompt's final position."""
    return answer_logit_diff(at_final_pos(logits, final_pos), answer_tokens)
