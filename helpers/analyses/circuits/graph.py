"""Circuits as graphs of edges: the model's computational graph, its edges and their scores, and circuits
of edges (with MIB's circuit file format). Running them is :mod:`.graph_runner`'s; scoring edges by
attribution is :mod:`.edge_attribution`'s and exactly, edge by edge, :mod:`.edge_patching`'s.

The graph (as in EAP-IG and the MIB benchmark). Senders, in the order they compute: ``input`` (the
embeddings), then per layer every head's output (``L{layer}H{head}``, ``z @ W_O`` without the bias) and
the MLP's output (``MLP{layer}``). Receivers: each head's query, key and value inputs (``L1H2<q>`` ...),
each MLP's input, and ``logits`` (the final stream the unembedding reads). An edge joins a sender to a
receiver that reads the residual stream after it: a head's inputs read every sender of earlier layers,
an MLP also reads its own layer's heads (not in parallel blocks, whose MLP reads the layer's input), the
logits read everything. Biases (``b_O``) are constants every receiver reads. Heads with grouped keys
and values get their own key and value inputs, like every other head.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from helpers.analyses.heads import head_name
from helpers.errors import SuiteError
from helpers.models.devices import to_host

InputKind = Literal["q", "k", "v"]
INPUT_KINDS: tuple[InputKind, ...] = ("q", "k", "v")


class GraphError(SuiteError, ValueError):
    """A graph, edge or circuit that does not fit the model; the message names it and the fix."""


# ---------------------------------------------------------------------------------------------------
# The graph
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Graph:
    """The computational graph of a model with ``n_layers`` layers of ``n_heads`` heads.

    Indices follow EAP-IG's layout: sender ``input`` is 0, head (l, h) is ``1 + l * (n_heads + 1) + h``,
    MLP l is ``1 + l * (n_heads + 1) + n_heads``; receiver (l, h, kind) is ``l * (3 * n_heads + 1) +
    kind * n_heads + h``, MLP l's input ``l * (3 * n_heads + 1) + 3 * n_heads``, the logits last.
    """

    n_layers: int
    n_heads: int
    parallel: bool = False

    @cached_property
    def senders(self) -> tuple[str, ...]:
        names = ["input"]
        for layer in range(self.n_layers):
            names += [head_name(layer, h) for h in range(self.n_heads)] + [f"MLP{layer}"]
        return tuple(names)

    @cached_property
    def receivers(self) -> tuple[str, ...]:
        names = []
        for layer in range(self.n_layers):
            names += [f"{head_name(layer, h)}<{kind}>" for kind in INPUT_KINDS for h in range(self.n_heads)] + [f"MLP{layer}"]
        return tuple(names + ["logits"])

    @property
    def n_senders(self) -> int:
        return 1 + self.n_layers * (self.n_heads + 1)

    @property
    def n_receivers(self) -> int:
        return self.n_layers * (3 * self.n_heads + 1) + 1

    def head_sender(self, layer: int, head: int) -> int:
        return 1 + layer * (self.n_heads + 1) + head

    def mlp_sender(self, layer: int) -> int:
        return 1 + layer * (self.n_heads + 1) + self.n_heads

    def head_receiver(self, layer: int, head: int, kind: InputKind) -> int:
        return layer * (3 * self.n_heads + 1) + INPUT_KINDS.index(kind) * self.n_heads + head

    def mlp_receiver(self, layer: int) -> int:
        return layer * (3 * self.n_heads + 1) + 3 * self.n_heads

    @property
    def logits_receiver(self) -> int:
        return self.n_receivers - 1

    @cached_property
    def prefix(self) -> tuple[int, ...]:
        """For each receiver, how many senders (the first ones) feed it."""
        out = []
        for layer in range(self.n_layers):
            heads = 1 + layer * (self.n_heads + 1)
            out += [heads] * (3 * self.n_heads) + [heads + (0 if self.parallel else self.n_heads)]
        return tuple(out + [self.n_senders])

    @cached_property
    def real(self) -> Tensor:
        """``[sender, receiver]``: True where the edge exists."""
        prefix = torch.tensor(self.prefix)
        return torch.arange(self.n_senders)[:, None] < prefix[None, :]

    @property
    def n_edges(self) -> int:
        return int(self.real.sum())

    def edge_name(self, sender: int, receiver: int) -> str:
        return f"{self.senders[sender]}->{self.receivers[receiver]}"

    def sender_index(self, name: str) -> int:
        try:
            return self.senders.index(name)
        except ValueError:
            raise GraphError(f"{name!r} is not a node of this graph ({self.n_layers} layers x {self.n_heads} heads). "
                             "Fix: name heads L{layer}H{head}, MLPs MLP{layer}, or 'input'") from None

    def receiver_index(self, name: str) -> int:
        try:
            return self.receivers.index(name)
        except ValueError:
            raise GraphError(f"{name!r} is not an input of this graph. Fix: name a head's input L{{layer}}H{{head}}<q>, "
                             "<k> or <v>, an MLP MLP{layer}, or 'logits'") from None

    def parse_edge(self, name: str) -> tuple[int, int]:
        """``"L0H1->L1H2<k>"`` -> (sender index, receiver index), checked."""
        if "->" not in name:
            raise GraphError(f"edge {name!r}: write it sender->receiver, e.g. 'L0H1->L1H2<k>'")
        sender, receiver = (part.strip() for part in name.split("->", 1))
        s, r = self.sender_index(sender), self.receiver_index(receiver)
        if not bool(self.real[s, r]):
            raise GraphError(f"edge {name!r} does not exist: {receiver} reads only what is computed before it")
        return s, r

    def receiver_parts(self, receiver: int) -> tuple[str, InputKind | None]:
        """The node a receiver belongs to and its input kind: ('L1H2', 'k'), ('MLP0', None), ('logits', None)."""
        name = self.receivers[receiver]
        if name.endswith(">"):
            node, kind = name[:-1].split("<")
            return node, kind  # type: ignore[return-value]
        return name, None

    def to_mib_name(self, node: str) -> str:
        """Our node names in the MIB / EAP-IG spelling: L1H2 -> a1.h2, MLP0 -> m0."""
        if node.startswith("MLP"):
            return f"m{node[3:]}"
        if node.startswith("L") and "H" in node:
            layer, head = node[1:].split("H")
            return f"a{layer}.h{head}"
        return node

    def from_mib_name(self, node: str) -> str:
        if node.startswith("a") and ".h" in node:
            layer, head = node[1:].split(".h", 1)
            if layer.isdigit() and head.isdigit():
                return head_name(int(layer), int(head))
        if node.startswith("m") and node[1:].isdigit():
            return f"MLP{node[1:]}"
        return node


# ---------------------------------------------------------------------------------------------------
# Edges and circuits
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Edge:
    sender: str
    receiver: str  # the node: L2H0, MLP1, logits
    input: InputKind | None  # q / k / v for a head, None for an MLP or the logits
    score: float
    method: str

    @property
    def name(self) -> str:
        return f"{self.sender}->{self.receiver}" + (f"<{self.input}>" if self.input else "")

    def to_dict(self) -> dict[str, Any]:
        return {"sender": self.sender, "receiver": self.receiver, "input": self.input, "score": self.score,
                "method": self.method}


@dataclass(frozen=True, eq=False)
class EdgeScores:
    """A score for every edge of ``graph`` (``scores[sender, receiver]``, NaN where no edge is), by ``method``.
    An attribution (EAP, EAP-IG) also has ``positions``: per prompt and position, each sender's
    attribution through all its edges (``[batch, pos, sender]``), which says where a node acts."""

    graph: Graph
    scores: Float[Tensor, "sender receiver"]
    method: str
    positions: Float[Tensor, "batch pos sender"] | None = None

    def ranked(self) -> list[tuple[int, int]]:
        """Every edge, largest absolute score first (ties in index order)."""
        return list(self._order)

    @cached_property
    def _order(self) -> tuple[tuple[int, int], ...]:
        size = torch.nan_to_num(self.scores.abs().float(), nan=-1.0)
        flat = torch.where(self.graph.real.to(size.device), size, torch.full_like(size, -1.0))
        order = to_host(torch.sort(flat.flatten(), descending=True, stable=True).indices[: self.graph.n_edges])
        n_receivers = self.graph.n_receivers
        return tuple((int(i) // n_receivers, int(i) % n_receivers) for i in order)

    @cached_property
    def _ranks(self) -> dict[tuple[int, int], int]:
        return {edge: rank for rank, edge in enumerate(self._order, start=1)}

    def edge(self, sender: int, receiver: int) -> Edge:
        node, kind = self.graph.receiver_parts(receiver)
        return Edge(self.graph.senders[sender], node, kind, float(self.scores[sender, receiver]), self.method)

    def top(self, n: int) -> list[Edge]:
        return [self.edge(s, r) for s, r in self._order[:n]]

    def circuit(self, n: int, *, name: str | None = None) -> EdgeCircuit:
        """The circuit of the top ``n`` edges by absolute score."""
        return EdgeCircuit(self.graph, frozenset(self._order[:n]), name or f"top {n} edges by {self.method}",
                           self.method)

    def rank_of(self, sender: int, receiver: int) -> int:
        """1 for the edge with the largest absolute score."""
        return self._ranks[(sender, receiver)]


@dataclass(frozen=True)
class EdgeCircuit:
    """A set of edges of ``graph`` (by (sender, receiver) index)."""

    graph: Graph
    edges: frozenset[tuple[int, int]]
    name: str
    method: str = "by hand"

    def __len__(self) -> int:
        return len(self.edges)

    def keep(self, *, device: Any = None) -> Float[Tensor, "sender receiver"]:
        mask = torch.zeros(self.graph.n_senders, self.graph.n_receivers, device=device)
        for s, r in self.edges:
            mask[s, r] = 1.0
        return mask

    def pruned(self) -> EdgeCircuit:
        """Without the edges that cannot matter (as MIB prunes before it evaluates): an edge from a head or
        MLP that no kept edge feeds, or into a node whose output no kept edge carries on to the logits."""
        g = self.graph
        edges = set(self.edges)
        while True:
            fed = {"input"} | {g.receiver_parts(r)[0] for _, r in edges}
            used = {"logits"} | {g.senders[s] for s, _ in edges}
            kept = {(s, r) for s, r in edges if g.senders[s] in fed and g.receiver_parts(r)[0] in used}
            if kept == edges:
                return EdgeCircuit(g, frozenset(kept), self.name, self.method)
            edges = kept

    @property
    def nodes(self) -> list[str]:
        """The heads and MLPs the circuit's edges touch, in graph order."""
        touched = {self.graph.senders[s] for s, _ in self.edges} | {self.graph.receiver_parts(r)[0] for _, r in self.edges}
        return [n for n in self.graph.senders[1:] if n in touched]

    @classmethod
    def from_heads(cls, graph: Graph, heads: Sequence[str], *, name: str) -> EdgeCircuit:
        """The node circuit of today's circuit notebook: every edge except those out of a head not in
        ``heads`` (the input, every MLP and the kept heads pass everything on)."""
        ablated = {graph.head_sender(layer, head) for layer in range(graph.n_layers) for head in range(graph.n_heads)
                   if head_name(layer, head) not in set(heads)}
        edges = {(s, r) for s, r in zip(*torch.nonzero(graph.real, as_tuple=True)) if int(s) not in ablated}
        return cls(graph, frozenset((int(s), int(r)) for s, r in edges), name, "heads")

    # -- files ---------------------------------------------------------------------------------------

    def to_mib(self, scores: EdgeScores | None = None) -> dict[str, Any]:
        """The MIB circuit-track / EAP-IG graph format: ``cfg``, ``nodes`` (in_graph) and ``edges`` (score,
        in_graph) under MIB's names (``a1.h2``, ``m0``, ``input->a0.h1<q>``)."""
        g = self.graph
        nodes_in = {"input", "logits", *self.nodes}
        edges = {}
        for s, r in zip(*torch.nonzero(g.real, as_tuple=True)):
            s, r = int(s), int(r)
            node, kind = g.receiver_parts(r)
            name = f"{g.to_mib_name(g.senders[s])}->{g.to_mib_name(node)}" + (f"<{kind}>" if kind else "")
            score = float(scores.scores[s, r]) if scores is not None else (1.0 if (s, r) in self.edges else 0.0)
            edges[name] = {"score": score if math.isfinite(score) else 0.0, "in_graph": (s, r) in self.edges}
        return {"cfg": {"n_layers": g.n_layers, "n_heads": g.n_heads, "parallel_attn_mlp": g.parallel},
                "nodes": {g.to_mib_name(n): {"in_graph": n in nodes_in} for n in ("input", *g.senders[1:], "logits")},
                "edges": edges, "name": self.name, "method": self.method}

    @classmethod
    def from_mib(cls, data: dict[str, Any], graph: Graph, *, name: str | None = None) -> EdgeCircuit:
        """A circuit from an MIB-format dict (ours, MIB's or one written by hand: ``edges`` may also be a
        list of names ``"L0H1->L1H2<k>"`` in either spelling), checked against ``graph``."""
        cfg = data.get("cfg", {})
        for key, want in (("n_layers", graph.n_layers), ("n_heads", graph.n_heads)):
            if key in cfg and cfg[key] != want:
                raise GraphError(f"the circuit's cfg.{key} is {cfg[key]} but the model has {want}. Fix: use a circuit "
                                 "found on this model")
        raw = data.get("edges")
        if isinstance(raw, dict):
            names = [n for n, e in raw.items() if e.get("in_graph", True)]
        elif isinstance(raw, list):
            names = list(raw)
        else:
            raise GraphError("a circuit file needs 'edges': a dict of name -> {in_graph, score} (MIB) or a list of "
                             "edge names such as 'L0H1->L1H2<k>'")
        edges = set()
        for entry in names:
            sender, receiver = entry.split("->", 1) if "->" in entry else (entry, "")
            kind = ""
            if receiver.endswith(">") and "<" in receiver:
                receiver, kind = receiver[:-1].split("<")
            ours = f"{graph.from_mib_name(sender)}->{graph.from_mib_name(receiver)}" + (f"<{kind}>" if kind else "")
            edges.add(graph.parse_edge(ours))
        return cls(graph, frozenset(edges), name or str(data.get("name", "circuit from a file")),
                   str(data.get("method", "from a file")))
