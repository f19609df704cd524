"""Ablating a head, and the backup heads that make up for it.

Context. Remove one important head's output at the final position (replace it with zeros, or with its
mean over the task's prompts) and run the model again. If nothing downstream reacted, the logit
difference would drop by exactly what the head contributed directly (its DLA), give or take the final
LayerNorm's scale. In GPT-2's IOI circuit it drops much less: other heads, *backup* heads, change what
they do and take over. Comparing every head's DLA after the ablation with before shows which ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from helpers.analyses.ablations import HeadAblationKind
from helpers.analyses.dla import (
    FinalPositionCache,
    compute_head_attribution,
    project_on_logit_diff,
    run_final_position_cache,
)
from helpers.analyses.heads import HeadScore, rank_heads_by_magnitude
from helpers.models.devices import to_host
from helpers.tasks.prompts import PromptSet


@dataclass(frozen=True)
class AblationResult:
    """The logit difference and every head's DLA before and after ablating one head."""

    head: HeadScore  # the ablated head, with its DLA before
    method: HeadAblationKind
    logit_diff_before: Float[Tensor, " batch"]
    logit_diff_after: Float[Tensor, " batch"]
    predicted_after: Float[Tensor, " batch"]  # before, minus the change in the head's own direct effect
    scale_ratio: Float[Tensor, " batch"]  # final LayerNorm scale after / before
    dla_before: Float[Tensor, "layer head_index"]
    dla_after: Float[Tensor, "layer head_index"]

    @property
    def compensation(self) -> float:
        """How much of the predicted drop did not happen: 0 = none, 1 = fully made up by other heads."""
        predicted_drop = float((self.logit_diff_before - self.predicted_after).mean())
        actual_drop = float((self.logit_diff_before - self.logit_diff_after).mean())
        return 1.0 - actual_drop / predicted_drop if predicted_drop != 0 else float("nan")

    def changed_heads(self, k: int = 5) -> list[HeadScore]:
        """The heads whose DLA changed most (value = after - before), the ablated head excluded."""
        change = self.dla_after - self.dla_before
        change[self.head.layer, self.head.head] = 0.0
        return rank_heads_by_magnitude(change, k)

    def to_dict(self) -> dict[str, Any]:
        return {
            "head": self.head.to_dict(), "method": self.method,
            "logit_diff_before": float(self.logit_diff_before.mean()),
            "logit_diff_after": float(self.logit_diff_after.mean()),
            "predicted_after": float(self.predicted_after.mean()),
            "scale_ratio": float(self.scale_ratio.mean()),
            "compensation": self.compensation,
            "changed_heads": [h.to_dict() for h in self.changed_heads()],
            "dla_before": self.dla_before.tolist(), "dla_after": self.dla_after.tolist(),
        }


def compute_head_ablation(
    model: Any, prompts: PromptSet, before: FinalPositionCache, layer: int, head: int,
    *, method: HeadAblationKind = "zero",
) -> AblationResult:
    """Ablate one head's output at each prompt's final position and measure what changes.

    Args:
        model: the model.
        prompts: the task's prompts.
        before: the clean run (:func:`helpers.analyses.dla.run_final_position_cache`).
        layer, head: the head to ablate.
        method: ``zero`` replaces its ``z`` with zeros; ``mean`` with its mean over the prompts.
    """
    if method not in ("zero", "mean"):
        raise ValueError(f"method={method!r}: use 'zero' or 'mean'")
    replacement = torch.zeros_like(before.z[layer, 0, head])
    if method == "mean":
        replacement = before.z[layer, :, head].mean(dim=0)
    rows = torch.arange(len(prompts))
    final_pos = prompts.final_pos

    def ablate(z: Tensor, hook: Any) -> Tensor:
        z = z.clone()
        z[rows, final_pos.to(z.device), head] = replacement.to(z.device, z.dtype)
        return z

    after = run_final_position_cache(model, prompts, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", ablate)])
    dla_before = compute_head_attribution(model, before)
    dla_after = compute_head_attribution(model, after)
    w_o = model.W_O[layer, head].float()  # the product is taken where the weight is
    replaced_out = to_host(replacement.to(w_o.device) @ w_o).expand(len(prompts), -1)
    if before.head_scale is not None:  # through the post-norm's scale, as the head's own DLA is
        replaced_out = replaced_out * before.head_scale[layer]
    replaced_effect = project_on_logit_diff(replaced_out, before)
    predicted = before.logit_diff - dla_before.per_prompt[layer, head] + replaced_effect
    return AblationResult(
        head=HeadScore(layer, head, float(dla_before.mean[layer, head])),
        method=method,
        logit_diff_before=before.logit_diff,
        logit_diff_after=after.logit_diff,
        predicted_after=predicted,
        scale_ratio=(after.final_scale / before.final_scale).squeeze(-1),
        dla_before=dla_before.mean,
        dla_after=dla_after.mean,
    )
