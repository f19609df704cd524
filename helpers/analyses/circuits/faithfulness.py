"""The two formulas called "faithfulness" in the literature, each under its own name, owned here.

- :func:`fraction_of_full`, the IOI paper's (Wang et al. 2022): the circuit's metric as a fraction of the full
  model's, ``F(C) / F(M)``. Head circuits (:mod:`.head_circuits`) report it: 0 is a metric of 0, which for a
  logit difference is indifference between the answers, whatever the empty circuit does.
- :func:`normalised_faithfulness`, MIB's (Mueller et al. 2025): where the circuit sits between the empty
  circuit and the full model, ``(F(C) - F(empty)) / (F(M) - F(empty))``. Circuits of edges (:mod:`.graph`)
  report it: 0 is no better than ablating everything, under the same ablation.

Both are 1 for the full model; they differ wherever the empty circuit's metric is not 0, which is usual
under resample and mean ablation. results.json keeps the key ``faithfulness`` for both (its schema says
which formula each section uses).
"""

from __future__ import annotations


def fraction_of_full(metric: float, full: float) -> float:
    """``metric / full``: the IOI paper's faithfulness of a circuit whose metric is ``metric``."""
    return metric / full


def normalised_faithfulness(metric: float, full: float, empty: float) -> float:
    """``(metric - empty) / (full - empty)``: MIB's faithfulness, 1 = the full model, 0 = the empty circuit."""
    return (metric - empty) / (full - empty)
