"""The one vocabulary of ablation: what replaces an activation that an analysis removes.

- ``resample``: the corrupted run's value (the same prompts with the evidence removed): what patching and
  path patching compare against, and MIB's default for circuits of edges.
- ``mean``: its mean over reference prompts (:data:`REFERENCES`: the corrupted prompts, or other prompts of
  the task), as the IOI paper ablates everything outside a circuit.
- ``zero``: zero, which takes the activation off the distribution the model ever sees: a bound, not a
  measurement.

Each analysis accepts the kinds it can make: circuits of edges all three (:mod:`.circuits.graph`), head
circuits mean ablation over a reference (:mod:`.circuits.head_circuits`), one head's ablation zero or mean
(:mod:`.ablation`).
"""

from __future__ import annotations

from typing import Literal

AblationKind = Literal["resample", "mean", "zero"]
ABLATION_KINDS: tuple[AblationKind, ...] = ("resample", "mean", "zero")
ABLATION_NAMES: dict[AblationKind, str] = {"resample": "resample (the corrupted run's outputs)",
                                           "mean": "mean (over reference prompts)", "zero": "zero"}
# The kinds one head's ablation makes (helpers.analyses.ablation): its output at the final position
HeadAblationKind = Literal["zero", "mean"]
# What mean ablation averages over
Reference = Literal["corrupted", "other_prompts"]
REFERENCES: tuple[Reference, ...] = ("corrupted", "other_prompts")
