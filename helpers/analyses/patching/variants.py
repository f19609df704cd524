"""The activation-patching variants, one row each: what is patched, how the figure calls it, the
``transformer_lens.patching`` function that computes the same sweep (the reference the tests and the
benchmark compare with), and how the patched run is built on each of the two paths.

TransformerLens builds every variant from one generic function given the hook and how to index it; here
a row says the same in data, and the engine's fast path (:mod:`.engine`) and the hooks path
(:mod:`.through_hooks`) read it instead of asking which kind they were given.

- A per-position variant patches one cached activation of the clean run at one position. ``resumes``
  says where in the layer the patched stream continues: ``"layer"`` (the residual stream entering the
  layer is replaced), ``"attention"`` (the attention's output changed: the stream after attention gets
  the change) or ``"mlp"`` (the MLP's output changed: the stream after the layer gets it).
- A per-head variant patches one head's ``z`` (its input to the output projection), made from the clean
  run's ``z``, or recombined from one run's attention pattern and the other's values (``z = pattern @
  values``): ``clean_part`` says which part comes from the clean run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor
from transformer_lens import patching as tl_patching

PatchKind = Literal["resid_pre", "attn_out", "mlp_out", "head_out", "head_v", "head_pattern"]
Run = Literal["clean", "corrupted"]


@dataclass(frozen=True)
class PatchVariant:
    """One patching variant (see the module docstring)."""

    kind: PatchKind
    title: str  # the figure's name for it
    reference: Callable[..., Tensor]  # the transformer_lens.patching function of the same sweep
    hook: str  # the hook of each layer the hooks path patches (``blocks.{layer}.<hook>``)
    # per position: the cached activation patched and where the patched stream resumes
    stream: str | None = None
    resumes: Literal["layer", "attention", "mlp"] | None = None
    # per head: what comes from the clean run, and the activation attribution patching differentiates
    clean_part: Literal["z", "values", "pattern"] | None = None
    attribution_site: Literal["z", "v", "pattern"] | None = None

    @property
    def per_position(self) -> bool:
        return self.stream is not None

    def patched_z(self, z: Callable[[Run], Tensor], pattern: Callable[[Run], Tensor],
                  values: Callable[[Run], Tensor]) -> Tensor:
        """A per-head variant's patched ``z`` ``[batch, pos, head, d_head]``, from readers of each run's
        ``z``, pattern ``[batch, head, query, key]`` and values per query head ``[batch, key, head, d_head]``
        (each reader slices what its caller needs, before the product)."""
        if self.clean_part == "z":
            return z("clean")
        pattern_run: Run = "clean" if self.clean_part == "pattern" else "corrupted"
        values_run: Run = "clean" if self.clean_part == "values" else "corrupted"
        return torch.einsum("bhqk,bkhd->bqhd", pattern(pattern_run), values(values_run))


VARIANTS: dict[PatchKind, PatchVariant] = {variant.kind: variant for variant in (
    PatchVariant("resid_pre", "Residual stream (before each layer)", tl_patching.get_act_patch_resid_pre,
                 "hook_resid_pre", stream="resid_pre", resumes="layer"),
    PatchVariant("attn_out", "Attention output", tl_patching.get_act_patch_attn_out,
                 "hook_attn_out", stream="attn_out", resumes="attention"),
    PatchVariant("mlp_out", "MLP output", tl_patching.get_act_patch_mlp_out,
                 "hook_mlp_out", stream="mlp_out", resumes="mlp"),
    PatchVariant("head_out", "Each head's output (all positions)", tl_patching.get_act_patch_attn_head_out_all_pos,
                 "attn.hook_z", clean_part="z", attribution_site="z"),
    PatchVariant("head_v", "Each head's values (all positions)", tl_patching.get_act_patch_attn_head_v_all_pos,
                 "attn.hook_z", clean_part="values", attribution_site="v"),
    PatchVariant("head_pattern", "Each head's attention pattern (all positions)",
                 tl_patching.get_act_patch_attn_head_pattern_all_pos, "attn.hook_z", clean_part="pattern",
                 attribution_site="pattern"),
)}
PATCH_KINDS: tuple[PatchKind, ...] = tuple(VARIANTS)
PER_POSITION: tuple[PatchKind, ...] = tuple(kind for kind, variant in VARIANTS.items() if variant.per_position)


def variant(kind: str) -> PatchVariant:
    """The row of ``kind``; a clear error for a kind that has none."""
    if kind not in VARIANTS:
        raise ValueError(f"unknown patch kind {kind!r}; use one of {', '.join(PATCH_KINDS)}")
    return VARIANTS[kind]  # type: ignore[index]
