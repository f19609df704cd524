"""The one owner of ablation: its vocabulary (what replaces an activation that an analysis removes), the
reference prompts mean ablation averages over, and those means, per template and position.

- ``resample``: the corrupted run's value (the same prompts with the evidence removed): what patching and
  path patching compare against, and MIB's default for circuits of edges.
- ``mean``: its mean over reference prompts (:data:`REFERENCES`: the corrupted prompts, or other prompts of
  the task), as the IOI paper ablates everything outside a circuit.
- ``zero``: zero, which takes the activation off the distribution the model ever sees: a bound, not a
  measurement.

Each analysis accepts the kinds it can make, and ablates what it studies: circuits of edges an edge, all
three kinds (:mod:`.circuits.edge_runs`); head circuits every head outside the circuit, mean ablation over
a reference (:mod:`.circuits.head_circuits`); one head at the final position, zero or mean over the
prompts (:mod:`.head_ablation`). The two that average over a reference take their means from here
(:func:`template_position_table`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from helpers.errors import SuiteError
from helpers.tasks.prompts import PromptSet, TaskSpec, build_prompts

AblationKind = Literal["resample", "mean", "zero"]
ABLATION_KINDS: tuple[AblationKind, ...] = ("resample", "mean", "zero")
ABLATION_NAMES: dict[AblationKind, str] = {"resample": "resample (the corrupted run's outputs)",
                                           "mean": "mean (over reference prompts)", "zero": "zero"}
# The kinds one head's ablation makes (helpers.analyses.head_ablation): its output at the final position
HeadAblationKind = Literal["zero", "mean"]
# What mean ablation averages over
Reference = Literal["corrupted", "other_prompts"]
REFERENCES: tuple[Reference, ...] = ("corrupted", "other_prompts")


class AblationError(SuiteError, ValueError):
    """An ablation that cannot be made; the message names the setting and the fix."""


@dataclass(frozen=True)
class ReferencePrompts:
    """The prompts whose mean head outputs replace ablated ones."""

    name: str
    tokens: Int[Tensor, "ref_batch ref_pos"]
    final_pos: Int[Tensor, " ref_batch"]
    template_index: tuple[int, ...]


def reference_prompts(kind: str, prompts: PromptSet, *, spec: TaskSpec | None = None,
                      model: Any = None) -> ReferencePrompts:
    """``corrupted``: the task's corrupted prompts. ``other_prompts``: as many fresh clean prompts from the
    task's templates, drawn with another seed (needs ``spec`` and ``model`` for its tokenizer)."""
    if kind == "corrupted":
        return ReferencePrompts("the task's corrupted prompts", prompts.corrupted_tokens, prompts.final_pos,
                                prompts.template_index)
    if kind != "other_prompts":
        raise AblationError(f"reference = {kind!r} is not a reference distribution. Fix: use one of {', '.join(REFERENCES)}.")
    if spec is None or model is None:
        raise AblationError("reference = 'other_prompts' needs the task and the model to draw fresh prompts.")
    if spec.is_explicit:
        raise AblationError(f"reference = 'other_prompts': task {spec.name!r} lists its prompts explicitly, so there are "
                           "no templates to draw others from. Fix: use reference = 'corrupted'.")
    other = build_prompts(spec.with_overrides(seed=spec.seed + 1, n_prompts=len(prompts)), model.tokenizer,
                          prepend_bos=bool(model.cfg.default_prepend_bos))
    return ReferencePrompts(f"{len(other)} other prompts of the task's templates (seed {spec.seed + 1})",
                            other.clean_tokens, other.final_pos, other.template_index)


def template_position_means(values: Float[Tensor, "ref_batch ref_pos *rest"], reference: ReferencePrompts,
                            prompts: PromptSet) -> Float[Tensor, "batch pos *rest"]:
    """Means of ``values`` (one row per reference prompt) per template and position, laid out like
    ``prompts``: each prompt gets the mean over the reference prompts of its template, position by position.

    A position that no reference prompt of the template reaches takes the mean over all reference
    prompts there (and zero if none reaches it).
    """
    table, row_of = template_position_table(values, reference, prompts)
    return table[row_of]


def template_position_table(values: Float[Tensor, "ref_batch ref_pos *rest"], reference: ReferencePrompts,
                            prompts: PromptSet) -> tuple[Float[Tensor, "template pos *rest"], Int[Tensor, " batch"]]:
    """:func:`template_position_means` one row per template of ``prompts`` (the table), and each prompt's
    row in it: ``table[row_of]`` is the means laid out like the prompts, without holding them per prompt."""
    ref_width = values.shape[1]
    final_pos = reference.final_pos.to(values.device)
    valid = (torch.arange(ref_width, device=values.device)[None] <= final_pos[:, None]).to(values.dtype)

    def mean_over(rows: list[int]) -> tuple[Tensor, Tensor]:
        weights = valid[rows]  # [rows, ref_pos]
        # every row: the values themselves, not a copy (0.6 GB of senders' outputs at GPT-2 small's size)
        chosen = values.contiguous() if rows == list(range(values.shape[0])) else values[rows]
        total = torch.einsum("bp...,bp->p...", chosen, weights)
        count = weights.sum(dim=0)  # [ref_pos]
        shape = (-1,) + (1,) * (values.ndim - 2)
        return total / count.clamp(min=1).view(shape), count

    everything, _ = mean_over(list(range(len(reference.template_index))))
    by_template: dict[int, Tensor] = {}
    for template in set(prompts.template_index):
        rows = [i for i, t in enumerate(reference.template_index) if t == template]
        mean, count = mean_over(rows) if rows else (everything, torch.zeros(ref_width, device=values.device))
        reached = (count > 0).view((-1,) + (1,) * (values.ndim - 2))
        by_template[template] = torch.where(reached, mean, everything)
    width = prompts.clean_tokens.shape[1]
    templates = sorted(by_template)
    table = values.new_zeros(len(templates), width, *values.shape[2:])
    shared = min(width, ref_width)
    for row, template in enumerate(templates):
        table[row, :shared] = by_template[template][:shared]
    row_of = torch.tensor([templates.index(t) for t in prompts.template_index], device=values.device)
    return table, row_of
