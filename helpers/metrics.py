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


def logit_diff(
    logits: Float[Tensor, "batch pos d_vocab"],
    answer_tokens: Int[Tensor, "batch 2"],
    final_pos: Int[Tensor, " batch"],
) -> Float[Tensor, " batch"]:
    """Correct minus incorrect answer logit at each prompt's final position."""
    final = at_final_pos(logits, final_pos)
    answers = answer_tokens.to(final.device)
    return final.gather(-1, answers[:, :1]).squeeze(-1) - final.gather(-1, answers[:, 1:]).squeeze(-1)
