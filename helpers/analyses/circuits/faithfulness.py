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

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from helpers.analyses.ablations import AblationKind

# The MIB benchmark's circuit sizes, as fractions of the graph's edges.
MIB_FRACTIONS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


def fraction_of_full(metric: float, full: float) -> float:
    """``metric / full``: the IOI paper's faithfulness of a circuit whose metric is ``metric``."""
    return metric / full


def normalised_faithfulness(metric: float, full: float, empty: float) -> float:
    """``(metric - empty) / (full - empty)``: MIB's faithfulness, 1 = the full model, 0 = the empty circuit."""
    return (metric - empty) / (full - empty)


@dataclass(frozen=True)
class NormalisedFaithfulness:
    """A circuit's metric (mean over prompts) beside the full and empty graphs' under one ablation; its
    faithfulness is MIB's, normalised between the empty circuit and the full model (:func:`normalised_faithfulness`)."""

    circuit: str
    n_edges: int
    ablation: AblationKind
    metric: float
    full_metric: float
    empty_metric: float

    @property
    def faithfulness(self) -> float:
        """(circuit - empty) / (full - empty): 1 = the circuit does what the model does, 0 = no better than
        ablating everything (:func:`normalised_faithfulness`)."""
        return normalised_faithfulness(self.metric, self.full_metric, self.empty_metric)

    def to_dict(self) -> dict[str, Any]:
        return {"circuit": self.circuit, "n_edges": self.n_edges, "ablation": self.ablation, "metric": self.metric,
                "full_metric": self.full_metric, "empty_metric": self.empty_metric, "faithfulness": self.faithfulness}


@dataclass(frozen=True)
class FaithfulnessByEdges:
    """Faithfulness of the top edges by one method at MIB's circuit sizes, with MIB's two areas."""

    method: str
    ablation: AblationKind
    fractions: tuple[float, ...]
    n_edges: tuple[int, ...]
    faithfulness: tuple[float, ...]

    @property
    def cpr(self) -> float:
        """Area under the curve over the fraction of edges (trapezoids): higher is better (MIB's CPR)."""
        return _area(self.fractions, self.faithfulness)

    @property
    def cmd(self) -> float:
        """Area between the curve and 1: lower is better (MIB's CMD)."""
        return _area(self.fractions, [abs(1.0 - f) for f in self.faithfulness])

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "ablation": self.ablation, "fractions": list(self.fractions),
                "n_edges": list(self.n_edges), "faithfulness": list(self.faithfulness), "cpr": self.cpr, "cmd": self.cmd}


def _area(xs: Sequence[float], ys: Sequence[float]) -> float:
    return float(sum((x2 - x1) * (y1 + y2) / 2 for x1, x2, y1, y2 in zip(xs, xs[1:], ys, ys[1:])))
