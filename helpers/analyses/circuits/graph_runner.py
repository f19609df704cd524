"""The graph of edges behind one object: :class:`GraphRunner` runs a model as its graph on a task's prompts
(:mod:`.edge_runs`, whose docstring says what a run of a circuit and an edge's effect mean) and scores its
edges, by attribution (EAP, EAP-IG: :mod:`.edge_attribution`) and exactly (path patching, one edge at a
time: :mod:`.edge_patching`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import cached_property

import torch
from jaxtyping import Float
from torch import Tensor

from helpers.analyses.circuits import edge_attribution
from helpers.analyses.circuits.edge_patching import ExactEdges
from helpers.analyses.circuits.edge_runs import GraphRuns
from helpers.analyses.circuits.graph import EdgeScores, GraphError


class GraphRunner(GraphRuns):
    """Runs a model as its graph of edges on a task's prompts and scores its edges (the module docstring).
    Arguments and errors as :class:`.edge_runs.GraphRuns`'."""

    def eap(self) -> EdgeScores:
        """Edge attribution patching: one backward pass at the clean run."""
        return edge_attribution.attribute(self, [1.0], "EAP")

    def eap_ig(self, steps: int = 5) -> EdgeScores:
        """EAP with integrated gradients over ``steps`` inputs from the corrupted to the clean embeddings."""
        if steps < 1:
            raise GraphError(f"steps = {steps}: EAP-IG needs at least 1 integration step. Fix: e.g. steps = 5")
        return edge_attribution.attribute(self, [k / steps for k in range(steps)], f"EAP-IG ({steps} steps)")

    @cached_property
    def exact(self) -> ExactEdges:
        """Exact patching of single edges, with the clean run's inputs it restarts from (kept until
        :meth:`release_clean_inputs`)."""
        return ExactEdges(self)

    def release_clean_inputs(self) -> None:
        """Free what exact path patching keeps between calls (the clean run's inputs, and its keys and values
        per key/value head: 0.3 GB at GPT-2 small's size with 64 prompts); the next call recomputes them, to
        the bit. For a caller done with path patching for a while (the walk, before EAP)."""
        self.__dict__.pop("exact", None)

    def edge_effects(self, receiver: int, senders: Sequence[int] | None = None) -> Float[Tensor, " sender"]:
        """:meth:`.edge_patching.ExactEdges.edge_effects`: the exact effect of each edge into ``receiver``."""
        return self.exact.edge_effects(receiver, senders)

    def path_patching(self, receiver: str, senders: Sequence[str] | None = None) -> dict[str, float]:
        """Exact path patching into ``receiver`` (e.g. ``"L2H0<q>"``, ``"MLP1"``, ``"logits"``): the effect of each
        sender's path (its edge), by sender name."""
        r = self.graph.receiver_index(receiver)
        chosen = None if senders is None else [self.graph.sender_index(s) for s in senders]
        effects = self.edge_effects(r, chosen)
        return {self.graph.senders[s]: float(effects[s]) for s in range(self.graph.n_senders) if not math.isnan(effects[s])}

    def exact_scores(self) -> EdgeScores:
        """The exact effect of every edge (one run per edge, batched): for small graphs."""
        scores = torch.stack([self.edge_effects(r) for r in range(self.graph.n_receivers)], dim=1)
        return EdgeScores(self.graph, scores, "exact patching")
