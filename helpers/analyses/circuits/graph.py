"""Circuits as graphs of edges: the model's computational graph, edge attribution (EAP, EAP-IG), exact
edge and path patching, and circuits run edge by edge under three ablations.

The graph (as in EAP-IG and the MIB benchmark). Senders, in the order they compute: ``input`` (the
embeddings), then per layer every head's output (``L{layer}H{head}``, ``z @ W_O`` without the bias) and
the MLP's output (``MLP{layer}``). Receivers: each head's query, key and value inputs (``L1H2<q>`` ...),
each MLP's input, and ``logits`` (the final stream the unembedding reads). An edge joins a sender to a
receiver that reads the residual stream after it: a head's inputs read every sender of earlier layers,
an MLP also reads its own layer's heads (not in parallel blocks, whose MLP reads the layer's input), the
logits read everything. Biases (``b_O``) are constants every receiver reads. Heads with grouped keys
and values get their own key and value inputs, like every other head.

What a run of a circuit means. The model runs on the clean prompts; every receiver builds its own input
as the sum of its senders' outputs, where an edge in the circuit carries the sender's output in this run
and an edge outside carries the sender's *ablated* output instead: the corrupted run's
(``resample``), its mean over reference prompts per template and position (``mean``), or nothing
(``zero``). Everything downstream is recomputed. With every edge kept, this is the clean run exactly;
with none under ``resample``, the corrupted run.

Numbers (normalised like activation patching, but the other way round: how much is lost). The *effect*
of an edge is ``(m(clean) - m(edge ablated)) / (m(clean) - m(corrupted))`` with ``m`` the task metric's
mean over prompts: 1 when that edge alone carries the clean-corrupted difference, 0 when it carries
nothing, negative when ablating it helps. Exact patching and path patching measure it by running the
model; EAP estimates it for every edge at once from one backward pass, ``(clean - corrupted sender
output) . d metric / d receiver input`` at the clean run; EAP-IG averages that gradient over inputs on the
straight line from the corrupted to the clean embeddings (``steps`` points, ``k / steps`` for k = 0 ..
steps - 1, as EAP-IG's reference implementation does).

Path patching (the IOI paper's, exact): the path from a sender to a receiver's input, everything else
frozen, is the edge between them: only that receiver sees the sender's corrupted output, every other
receiver sees the clean one, and what the receiver then writes flows on through the recomputed model.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from helpers.analyses.ablation_kinds import ABLATION_KINDS, AblationKind
from helpers.analyses.circuits.faithfulness import normalised_faithfulness
from helpers.analyses.circuits.head_circuits import ReferencePrompts, template_position_table
from helpers.analyses.contrast import Contrast
from helpers.analyses.heads import head_name
from helpers.errors import SuiteError
from helpers.models.forward import ForwardPass, UnsupportedArchitecture
from helpers.models.hooks import final_logits
from helpers.tasks.metrics import at_final_pos
from helpers.tasks.prompts import PromptSet

InputKind = Literal["q", "k", "v"]
INPUT_KINDS: tuple[InputKind, ...] = ("q", "k", "v")
# The MIB benchmark's circuit sizes, as fractions of the graph's edges.
MIB_FRACTIONS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


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
        size = torch.nan_to_num(self.scores.abs().float().cpu(), nan=-1.0)
        flat = torch.where(self.graph.real, size, torch.full_like(size, -1.0))
        order = torch.sort(flat.flatten(), descending=True, stable=True).indices[: self.graph.n_edges]
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


# ---------------------------------------------------------------------------------------------------
# Running the graph
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Plain:
    """One unablated run: every sender's output and what the edge patches restart from."""

    # None in EAP's runs and in GraphRunner._clean_inputs (:meth:`GraphRunner._plain`)
    outputs: Float[Tensor, "batch pos sender d_model"] | None
    # what the edge patches restart from: GraphRunner._clean_inputs' only (None elsewhere)
    resid_pre: Float[Tensor, "layer batch pos d_model"] | None
    mlp_in: Float[Tensor, "layer batch pos d_model"] | None
    q: Float[Tensor, "layer batch pos head_index d_head"] | None  # rotated, per query head
    k: Float[Tensor, "layer batch pos head_index d_head"] | None
    v: Float[Tensor, "layer batch pos head_index d_head"] | None
    final: Float[Tensor, "batch d_model"]
    per_prompt: Float[Tensor, " scored"]  # one per prompt (none for prompts without a metric)


@dataclass(frozen=True)
class NormalisedFaithfulness:
    """A circuit's metric (mean over prompts) beside the full and empty graphs' under one ablation; its
    faithfulness is MIB's, normalised between the empty circuit and the full model (:mod:`.faithfulness`)."""

    circuit: str
    n_edges: int
    ablation: AblationKind
    metric: float
    full_metric: float
    empty_metric: float

    @property
    def faithfulness(self) -> float:
        """(circuit - empty) / (full - empty): 1 = the circuit does what the model does, 0 = no better than
        ablating everything (:func:`.faithfulness.normalised_faithfulness`)."""
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


class GraphRunner:
    """Runs a model as its graph of edges on a task's prompts (see the module docstring).

    Args:
        model: a model loaded by :func:`helpers.models.load.load_model`.
        prompts: the task's prompts (clean and corrupted of equal lengths).
        reference_tokens / reference: what ``mean`` ablation averages over (a
            :class:`helpers.analyses.circuits.head_circuits.ReferencePrompts`); the corrupted prompts when None.
        max_rows: at most this many prompts in one forward pass that carries every sender's output (running
            circuits, attribution).
        edge_rows: at most this many rows (a copy of a prompt each, one residual stream) in one run of exact
            path patching, which patches one edge per copy.

    Raises:
        UnsupportedArchitecture: the model's heads do not each write to the residual stream on their own
            (Gemma 2's post-attention norm), or the engine's forward pass does not reproduce the model.
    """

    def __init__(self, model: Any, prompts: PromptSet, *, reference: Any = None, max_rows: int = 64,
                 edge_rows: int = 256):
        if model.training:
            raise ValueError("the graph needs model.eval(); load the model with helpers.models.load.load_model")
        self.fw = fw = ForwardPass(model)
        if not fw.linear_heads:
            raise UnsupportedArchitecture(
                f"{fw.arch.model_type}: a norm after attention couples the heads' outputs, so a head has no edge of "
                "its own to later nodes. Edge-level analysis needs heads that write to the residual stream on their own")
        self.model, self.prompts, self.max_rows, self.edge_rows = model, prompts, max_rows, edge_rows
        self.arch = fw.arch
        self.graph = Graph(fw.n_layers, fw.n_heads, fw.arch.parallel)
        self.device = fw.w.W_E.device
        self.contrast = contrast = Contrast.on(prompts, self.device)
        self.clean_tokens, self.corrupted_tokens = contrast.clean_tokens, contrast.corrupted_tokens
        self.final_pos, self.answers = contrast.final_pos, contrast.answers
        self.positions = torch.arange(self.clean_tokens.shape[1], device=self.device)
        self.W, self.b = fw.per_head_qkv()  # [3, layer, head, d_model, d_head], [3, layer, head, d_head]
        assert self.W.shape[-2] == model.cfg.d_model
        with torch.no_grad():
            # the clean run's inputs (0.2 GB at GPT-2 small's size with 64 prompts) are read by exact path
            # patching only: :attr:`_clean_inputs` recomputes them, to the bit, when it first asks
            self.clean = self._plain(self.clean_tokens)
            self.corrupted = self._plain(self.corrupted_tokens)
            own = self._per_prompt(final_logits(model, self.clean_tokens, self.final_pos).float(), None, logits=True)
        error = float((own - self.clean.per_prompt).abs().max())
        scale = float(own.abs().max()) + 1.0
        if not error <= 1e-3 * scale:
            raise UnsupportedArchitecture(f"the graph's forward pass differs from the model's by {error:.2g} in the task "
                                          "metric: this architecture is not run edge by edge")
        self.clean_value = float(self.clean.per_prompt.mean())
        self.corrupted_value = float(self.corrupted.per_prompt.mean())
        if self.clean_value == self.corrupted_value:
            raise GraphError("the clean and corrupted runs give the same metric: there is nothing to attribute")
        self._reference = reference
        self._alternatives: dict[AblationKind, Tensor | tuple[Tensor, Tensor]] = {}
        self._anchor_values: dict[AblationKind, tuple[float, float]] = {}
        prefix = torch.tensor(self.graph.prefix)
        # for each sender, the first receiver it feeds (receivers are in graph order, their prefixes rise)
        self._first_fed = torch.tensor([int((prefix > s).nonzero()[0]) for s in range(self.graph.n_senders)],
                                       device=self.device)
        self.first_difference = contrast.first_difference

    # -- weights and the plain run --------------------------------------------------------------------

    def _project(self, layer: int, normed: Tensor, kind: int) -> Tensor:
        """One input kind (0 q, 1 k, 2 v) of every head from per-head normalised inputs ``[rows, pos, head, D]``
        (or one shared input ``[rows, pos, D]``)."""
        if normed.ndim == 3:
            return torch.einsum("bpd,hde->bphe", normed, self.W[kind, layer]) + self.b[kind, layer]
        return torch.einsum("bphd,hde->bphe", normed, self.W[kind, layer]) + self.b[kind, layer]

    def _heads_out(self, layer: int, z: Tensor) -> Tensor:
        """Each head's output ``[rows, pos, head, d_model]`` (without ``b_O``)."""
        return torch.einsum("bphe,hed->bphd", z, self.fw.w.W_O[layer])

    def _per_prompt(self, final: Tensor, rows: slice | None, *, logits: bool = False) -> Tensor:
        """The task metric per row from final streams (or, with ``logits``, final logits)."""
        answers = self.answers if rows is None else self.answers.select(list(range(self.final_pos.shape[0]))[rows])
        if logits:
            return answers(final)
        if answers.is_linear:
            repeat = final.shape[0] // answers.tokens.shape[0]
            tokens, weights = answers.tokens.repeat(repeat, 1), answers.weights.to(final.dtype).repeat(repeat, 1)
            return (self.fw.answer_logits(final, tokens) * weights).sum(-1)
        return answers(self.fw.unembed(final).float())

    def _chunks(self) -> Iterator[slice]:
        batch = self.final_pos.shape[0]
        for start in range(0, batch, self.max_rows):
            yield slice(start, min(batch, start + self.max_rows))

    def _plain(self, tokens: Tensor, *, embed: Tensor | None = None, grads: dict[str, list[Tensor]] | None = None,
               rows: slice | None = None, metric: bool = True, inputs: bool = False, outputs: bool = True,
               into: Tensor | None = None) -> _Plain:
        """The model on the task's prompts ``tokens`` (``rows`` of them; or from the embeddings ``embed``),
        keeping every sender's output, and with ``inputs`` what the edge patches restart from. With
        ``grads`` (EAP's runs), the inputs whose gradients EAP reads are recorded there (retaining their
        gradients), and the stream entering each layer (``resid_pre``, for the chain rule through the norm);
        the senders' outputs are not kept (EAP reads the clean and corrupted runs', 0.14 GB per 16 prompts at
        GPT-2 small's size, from the shapes). With ``metric=False`` (other prompts), no metric is computed.
        ``into``: where to write the senders' outputs (``[batch, pos, sender, d_model]``, e.g. a slice of a
        larger buffer), instead of a tensor of their own. With ``outputs=False``, the senders' outputs are not
        kept (:attr:`_clean_inputs`: :attr:`clean` has them)."""
        fw, positions = self.fw, torch.arange(tokens.shape[1], device=self.device)
        x = fw.embed(tokens) if embed is None else embed
        if grads is not None:
            x = x.detach().requires_grad_(True)
        # every sender's output, written in place as it is computed (stacking a list of them held two copies)
        kept_outputs = (into if into is not None else x.new_empty(*x.shape[:2], self.graph.n_senders, x.shape[-1])
                        ) if grads is None and outputs else None
        if kept_outputs is not None:
            kept_outputs[:, :, 0] = x.detach()
        resid_pre, mlp_ins, qs, ks, vs = [], [], [], [], []
        if grads is not None:
            grads["resid_pre"] = resid_pre
        for layer in range(fw.n_layers):
            if inputs or grads is not None:  # else nothing holds a layer's inputs past it (0.2 GB at GPT-2 small's size)
                resid_pre.append(x)
            normed = fw.norm(x)
            q, k, v = (self._project(layer, normed, kind) for kind in range(3))
            if grads is not None:
                for name, tensor in (("q", q), ("k", k), ("v", v)):
                    tensor.retain_grad()
                    grads.setdefault(name, []).append(tensor)
            q, k = self.fw.rotate(q, positions), self.fw.rotate(k, positions)
            _, z = fw.attend(layer, q, k, v, positions, per_query_head=True)
            heads = self._heads_out(layer, z)
            attn = heads.sum(dim=2) + fw.w.b_O[layer]
            mlp_in = x if self.arch.parallel else x + attn
            if grads is not None:
                read = torch.zeros_like(mlp_in, requires_grad=True)
                grads.setdefault("mlp", []).append(read)
                mlp_out = fw.mlp_out_from_hidden(layer, fw.mlp_hidden(layer, mlp_in + read))
            else:
                mlp_out = fw.mlp_out_from_hidden(layer, fw.mlp_hidden(layer, mlp_in))
            x = x + attn + mlp_out
            if kept_outputs is not None:
                head_0 = self.graph.head_sender(layer, 0)
                kept_outputs[:, :, head_0: head_0 + fw.n_heads] = heads.detach()
                kept_outputs[:, :, self.graph.mlp_sender(layer)] = mlp_out.detach()
            if inputs:
                mlp_ins.append(mlp_in)
                qs.append(q)
                ks.append(k)
                vs.append(v)
        if grads is not None:
            x.retain_grad()
            grads["logits"] = [x]
        final = at_final_pos(x, self.final_pos[rows] if rows is not None else self.final_pos) if metric else x[:, -1]
        kept = [torch.stack(t) if inputs else None for t in (resid_pre, mlp_ins, qs, ks, vs)]
        return _Plain(kept_outputs, *kept, final,
                      self._per_prompt(final, rows) if metric else final.new_zeros(0))

    # -- the metric -----------------------------------------------------------------------------------

    def normalised(self, per_prompt: Float[Tensor, "*config batch"]) -> Float[Tensor, "*config"]:
        """Mean over prompts, 0 = corrupted run, 1 = clean run."""
        return (per_prompt.mean(dim=-1) - self.corrupted_value) / (self.clean_value - self.corrupted_value)

    def effect(self, per_prompt: Float[Tensor, "*config batch"]) -> Float[Tensor, "*config"]:
        """How much of the clean-corrupted difference is lost: 1 - normalised."""
        return 1.0 - self.normalised(per_prompt)

    # -- ablations ------------------------------------------------------------------------------------

    def alternative(self, kind: AblationKind, rows: slice | None = None) -> Float[Tensor, "batch pos sender d_model"]:
        """What an ablated edge carries instead of its sender's output, per prompt and position (the
        prompts ``rows``, or all). Mean ablation's means are kept per template, not per prompt (a copy of
        every sender's output, 0.6 GB at GPT-2 small's size with 64 prompts): they are laid out here."""
        value = self._alternative(kind)
        if isinstance(value, tuple):  # (means per template, each prompt's template)
            table, row_of = value
            return table[row_of if rows is None else row_of[rows]]
        return value if rows is None else value[rows]

    def _alternative_at_final(self, kind: AblationKind) -> Float[Tensor, "batch sender d_model"]:
        """:meth:`alternative` at each prompt's final position."""
        value = self._alternative(kind)
        if isinstance(value, tuple):
            table, row_of = value
            return table[row_of, self.final_pos]
        return at_final_pos(value, self.final_pos)

    def _alternative(self, kind: AblationKind) -> Tensor | tuple[Tensor, Tensor]:
        if kind not in ABLATION_KINDS:
            raise GraphError(f"ablation = {kind!r}. Fix: use one of {', '.join(ABLATION_KINDS)}")
        if kind not in self._alternatives:
            if kind == "resample":
                value = self.corrupted.outputs
            elif kind == "zero":  # one zero seen at every index: no memory of the outputs' size
                value = self.clean.outputs.new_zeros(()).expand_as(self.clean.outputs)
            else:

                reference = self._reference or ReferencePrompts(
                    "the task's corrupted prompts", self.prompts.corrupted_tokens, self.prompts.final_pos,
                    self.prompts.template_index)
                with torch.no_grad():
                    tokens = reference.tokens.to(self.device)
                    # every reference prompt's, written in place a chunk at a time (no copy to cat, and no
                    # chunk's outputs of their own to copy: 0.14 GB per 16 prompts at GPT-2 small's size)
                    outputs = self.clean.outputs.new_empty(*tokens.shape, *self.clean.outputs.shape[2:])
                    for rows in _slices(tokens.shape[0], self.max_rows):
                        self._plain(tokens[rows], metric=False, into=outputs[rows])
                shifted = ReferencePrompts(reference.name, reference.tokens, reference.final_pos.to(self.device),
                                           reference.template_index)
                value = template_position_table(outputs, shifted, self.prompts)
            self._alternatives[kind] = value
        return self._alternatives[kind]

    # -- running circuits -----------------------------------------------------------------------------

    def run(self, keep: Float[Tensor, "sender receiver"], ablation: AblationKind = "resample") -> Float[Tensor, " batch"]:
        """The task metric per prompt when only the edges where ``keep`` is 1 carry their sender's output and
        the others carry ``ablation``'s (see the module docstring)."""
        keep = keep.to(self.device, self.clean.outputs.dtype)
        with torch.no_grad():
            return torch.cat([self._masked(self.clean_tokens[rows], keep, self.alternative(ablation, rows), rows)
                              for rows in self._chunks()])

    def direct_effects(self, keep: Float[Tensor, "sender receiver"] | None = None,
                       ablation: AblationKind = "mean") -> Float[Tensor, " sender"]:
        """Each sender's direct effect on the metric (the effect of ablating its edge to the logits alone,
        to the corrupted run's output) in the run where ``keep`` holds (every edge by default) and the
        other edges carry ``ablation``'s outputs: e.g. the heads' direct effects once the name movers are
        ablated, which is how backup name movers show themselves."""
        g = self.graph
        keep = (g.real.float() if keep is None else keep).to(self.device, self.clean.outputs.dtype)
        corrupted_final = at_final_pos(self.corrupted.outputs, self.final_pos)  # [batch, sender, d_model]
        with torch.no_grad():
            per_prompt, finals, outs = [], [], []
            for rows in self._chunks():
                record: dict[str, Tensor] = {}
                per_prompt.append(self._masked(self.clean_tokens[rows], keep, self.alternative(ablation, rows), rows,
                                               record=record))
                finals.append(record["final"])
                outs.append(record["outputs"])
            base, final, outputs = torch.cat(per_prompt), torch.cat(finals), torch.cat(outs)
            # the stream the logits read changes by (ablated - carried) of the one sender's edge, if kept
            carried = torch.where(keep[:, g.logits_receiver].bool()[None, :, None], outputs,
                                  self._alternative_at_final(ablation))
            change = corrupted_final - carried  # [batch, sender, d_model]
            stream = (final[:, None] + change).transpose(0, 1).flatten(0, 1)  # [sender * batch, d_model]
            batch = self.final_pos.shape[0]
            without = self._per_prompt(stream, None).view(g.n_senders, batch)
        return self.normalised(base) - self.normalised(without)

    def _masked(self, tokens: Tensor, keep: Tensor, alt: Tensor, rows: slice,
                record: dict[str, Tensor] | None = None) -> Tensor:
        fw, g, positions = self.fw, self.graph, self.positions
        embed = fw.embed(tokens)
        batch, width, d_model = embed.shape
        # each sender's output in this run minus its ablated output, sender-major (a prefix is a slice)
        diffs = embed.new_empty(g.n_senders, batch, width, d_model)
        diffs[0] = embed - alt[:, :, 0]
        x = embed  # the stream with every edge kept: the sum of the senders' outputs and the biases
        bias = torch.zeros_like(embed[0, 0])  # the biases (b_O) in it

        def inputs(stream: Tensor, bias: Tensor, receivers: slice | int, prefix: int) -> Tensor:
            """Each receiver's input: the biases, every sender's ablated output, and for each kept edge
            (output - ablated output); a receiver whose every edge carries zero reads exactly zero."""
            mask = keep[:prefix, receivers]
            if bool((mask == 1).all()):
                return stream  # one stream every receiver shares
            base = bias + alt[:, :, :prefix].sum(dim=2)
            if mask.ndim == 1:
                return base + torch.tensordot(mask, diffs[:prefix], dims=1)
            kept = (mask.T @ diffs[:prefix].flatten(1)).view(-1, batch, width, d_model)
            return base[:, :, None] + kept.permute(1, 2, 0, 3)

        n = g.n_heads
        for layer in range(g.n_layers):
            first = g.head_receiver(layer, 0, "q")
            normed = fw.norm(inputs(x, bias, slice(first, first + 3 * n), g.prefix[first]))
            if normed.ndim == 3:
                q, k, v = (self._project(layer, normed, kind) for kind in range(3))
            else:
                q, k, v = (self._project(layer, normed[:, :, kind * n:(kind + 1) * n], kind) for kind in range(3))
            q, k = self.fw.rotate(q, positions), self.fw.rotate(k, positions)
            _, z = fw.attend(layer, q, k, v, positions, per_query_head=True)
            heads = self._heads_out(layer, z)
            attn = heads.sum(dim=2) + fw.w.b_O[layer]
            head_0 = g.head_sender(layer, 0)
            diffs[head_0: head_0 + n] = (heads - alt[:, :, head_0: head_0 + n]).permute(2, 0, 1, 3)
            mlp = g.mlp_receiver(layer)
            if self.arch.parallel:
                mlp_in = inputs(x, bias, mlp, g.prefix[mlp])
            else:
                mlp_in = inputs(x + attn, bias + fw.w.b_O[layer], mlp, g.prefix[mlp])
            mlp_out = fw.mlp_out_from_hidden(layer, fw.mlp_hidden(layer, mlp_in))
            diffs[g.mlp_sender(layer)] = mlp_out - alt[:, :, g.mlp_sender(layer)]
            x = x + attn + mlp_out
            bias = bias + fw.w.b_O[layer]
        final_stream = at_final_pos(inputs(x, bias, g.logits_receiver, g.n_senders), self.final_pos[rows])
        if record is not None:
            record["final"] = final_stream
            # each sender's output in this run, at the final positions only
            final_pos = self.final_pos[rows]
            record["outputs"] = at_final_pos(diffs.permute(1, 2, 0, 3), final_pos) + at_final_pos(alt, final_pos)
        return self._per_prompt(final_stream, rows)

    def evaluate(self, circuit: EdgeCircuit, ablation: AblationKind = "resample", *,
                 prune: bool = True) -> NormalisedFaithfulness:
        """The circuit's faithfulness under ``ablation``, by running it (pruned first, as MIB does)."""
        full, empty = self._anchors(ablation)
        used = circuit.pruned() if prune else circuit
        metric = float(self.run(used.keep(), ablation).mean())
        return NormalisedFaithfulness(circuit.name, len(circuit), ablation, metric, full, empty)

    def _anchors(self, ablation: AblationKind) -> tuple[float, float]:
        """The metric with every edge kept and with none, under ``ablation`` (computed once each)."""
        if ablation not in self._anchor_values:
            full = float(self.run(self.graph.real.float(), ablation).mean())
            empty = float(self.run(torch.zeros(self.graph.n_senders, self.graph.n_receivers), ablation).mean())
            self._anchor_values[ablation] = (full, empty)
        return self._anchor_values[ablation]

    def faithfulness_by_edges(self, scores: EdgeScores, ablation: AblationKind = "resample", *,
                              fractions: Sequence[float] = MIB_FRACTIONS) -> FaithfulnessByEdges:
        """Faithfulness of the top ``int(fraction * n_edges)`` edges by ``scores``, by running each circuit."""
        counts = tuple(int(f * self.graph.n_edges) for f in fractions)
        values = tuple(self.evaluate(scores.circuit(n), ablation).faithfulness for n in counts)
        return FaithfulnessByEdges(scores.method, ablation, tuple(fractions), counts, values)

    # -- attribution ----------------------------------------------------------------------------------

    def eap(self) -> EdgeScores:
        """Edge attribution patching: one backward pass at the clean run."""
        return self._attribute([1.0], "EAP")

    def eap_ig(self, steps: int = 5) -> EdgeScores:
        """EAP with integrated gradients over ``steps`` inputs from the corrupted to the clean embeddings."""
        if steps < 1:
            raise GraphError(f"steps = {steps}: EAP-IG needs at least 1 integration step. Fix: e.g. steps = 5")
        return self._attribute([k / steps for k in range(steps)], f"EAP-IG ({steps} steps)")

    def _attribute(self, alphas: Sequence[float], method: str) -> EdgeScores:
        """``(clean - corrupted output of each sender) . mean over alphas of d metric / d receiver input``,
        summed over positions: per chunk of prompts, the gradients with respect to every receiver's input
        are summed over the integration points first, then multiplied with the senders' differences in
        one matrix product (edges that do not exist are computed too, and set to NaN)."""
        g, fw = self.graph, self.fw
        scores = torch.zeros(g.n_senders, g.n_receivers, device=self.device, dtype=self.clean.outputs.dtype)
        positions = torch.zeros(*self.clean_tokens.shape, g.n_senders, device=self.device)
        gap = self.clean_value - self.corrupted_value
        batch = self.final_pos.shape[0]
        n = 3 * g.n_heads
        for rows in self._chunks():
            clean_embed = self.clean.outputs[rows, :, 0]
            corrupted_embed = self.corrupted.outputs[rows, :, 0]
            summed = clean_embed.new_zeros(g.n_receivers, *clean_embed.shape)  # [receiver, batch, pos, d_model]
            for alpha in alphas:
                embed = (corrupted_embed + alpha * (clean_embed - corrupted_embed)).detach()
                grads: dict[str, list[Tensor]] = {}
                with torch.enable_grad():
                    run = self._plain(self.clean_tokens[rows], embed=embed, grads=grads, rows=rows)
                    (run.per_prompt.sum() / (batch * gap)).backward()
                for layer in range(g.n_layers):
                    read = torch.cat([torch.einsum("bphe,hde->bphd", grads[name][layer].grad, self.W[i, layer])
                                      for i, name in enumerate("qkv")], dim=2)  # [batch, pos, 3 * heads, d_model]
                    first = g.head_receiver(layer, 0, "q")
                    summed[first: first + n] += _through_norm(fw, grads["resid_pre"][layer].detach(), read).permute(2, 0, 1, 3)
                    summed[g.mlp_receiver(layer)] += grads["mlp"][layer].grad
                summed[g.logits_receiver] += grads["logits"][0].grad
                del run, grads  # this point's run, before the next one's (0.14 GB at GPT-2 small's size)
            # [sender, batch, pos, d_model], computed into its sender-major layout (not a copy of it after)
            delta = summed.new_empty(g.n_senders, *clean_embed.shape)
            torch.sub(self.clean.outputs[rows].permute(2, 0, 1, 3), self.corrupted.outputs[rows].permute(2, 0, 1, 3),
                      out=delta)
            scores += (delta.flatten(1) @ summed.flatten(1).T) / len(alphas)
            # per position, each sender's attribution through all its edges: its difference times the sum of
            # the gradients of every receiver it feeds (a suffix of the receivers, in graph order)
            positions[rows] = (self._through_each_sender(summed, delta) / len(alphas)).permute(1, 2, 0)
            del summed, delta
        scores = torch.where(g.real.to(self.device), scores, torch.full_like(scores, float("nan")))
        return EdgeScores(self.graph, scores, method, positions)

    def _through_each_sender(self, summed: Float[Tensor, "receiver *rest d_model"],
                             delta: Float[Tensor, "sender *rest d_model"]) -> Float[Tensor, "sender *rest"]:
        """For each sender, ``delta[sender]`` dotted (over ``d_model``) with the sum of ``summed`` over the
        receivers it feeds (from its first on), added from the last receiver back:
        ``(summed.flip(0).cumsum(0).flip(0)[first_fed] * delta).sum(-1)`` without that expression's copies of
        ``summed`` (0.4 GB each per 16 prompts at GPT-2 small's size, from the shapes): each sender's suffix
        sum is read as it is reached. On the CPU the running sum is kept in float64, as torch's cumsum keeps
        it there, and rounded to ``summed``'s dtype before the product, so the result is the same to the bit
        (tested)."""
        out = delta.new_empty(delta.shape[:-1])
        running = torch.zeros_like(summed[0], dtype=torch.float64 if summed.device.type == "cpu" else summed.dtype)
        senders_of: dict[int, list[int]] = {}
        for sender, receiver in enumerate(self._first_fed.tolist()):
            senders_of.setdefault(receiver, []).append(sender)
        for receiver in range(summed.shape[0] - 1, -1, -1):
            running += summed[receiver]
            if receiver in senders_of:
                suffix = running.to(summed.dtype)
                for sender in senders_of[receiver]:
                    out[sender] = (suffix * delta[sender]).sum(-1)
        return out

    # -- exact edges and path patching ----------------------------------------------------------------

    def edge_effects(self, receiver: int, senders: Sequence[int] | None = None) -> Float[Tensor, " sender"]:
        """The exact effect (module docstring) of each edge into ``receiver``: that one edge ablated to the
        corrupted run's output, everything else as in the clean run and recomputed downstream. Senders
        not asked for (or not feeding it) are NaN."""
        g = self.graph
        prefix = g.prefix[receiver]
        chosen = list(range(prefix)) if senders is None else [s for s in senders if s < prefix]
        out = torch.full((g.n_senders,), float("nan"), device=self.device)
        if not chosen:
            return out
        per_chunk = max(1, self.edge_rows // self.final_pos.shape[0])
        with torch.no_grad():
            for start in range(0, len(chosen), per_chunk):
                group = chosen[start: start + per_chunk]
                per_prompt = self._one_edge_each(receiver, group)
                out[group] = self.effect(per_prompt.view(len(group), -1))
        return out

    def _one_edge_each(self, receiver: int, senders: list[int]) -> Float[Tensor, " rows"]:
        """Per prompt, for each sender in turn (rows: sender-major), the metric with the one edge from it
        into ``receiver`` ablated (resample)."""
        g, fw, clean = self.graph, self.fw, self.clean
        n_cfg = len(senders)
        start = min(self.first_difference, int(self.final_pos.min()))
        delta = (clean.outputs[:, start:, senders] - self.corrupted.outputs[:, start:, senders])  # [b, p', c, D]
        delta = delta.permute(2, 0, 1, 3).flatten(0, 1)  # [c * b, p', D]
        final = self.final_pos.repeat(n_cfg)
        node, kind = g.receiver_parts(receiver)
        if node == "logits":
            within = (final - start).clamp(min=0)
            rows = torch.arange(final.shape[0], device=self.device)
            stream = clean.final.repeat(n_cfg, 1) - delta[rows, within]
            return self._per_prompt(stream, None)
        inputs = self._clean_inputs  # not before: the logits' edges read the clean outputs only
        if node.startswith("MLP"):
            layer = int(node[3:])
            mlp_in = inputs.mlp_in[layer][:, start:].repeat(n_cfg, 1, 1) - delta
            mlp_clean = clean.outputs[:, start:, g.mlp_sender(layer)].repeat(n_cfg, 1, 1)
            mlp_new = fw.mlp_out_from_hidden(layer, fw.mlp_hidden(layer, mlp_in))
            x = inputs.resid_pre[layer + 1][:, start:] if layer + 1 < g.n_layers else None
            x = (x.repeat(n_cfg, 1, 1) if x is not None else self._resid_final_clean()[:, start:].repeat(n_cfg, 1, 1))
            x = x + mlp_new - mlp_clean
            return self._finish(x, layer + 1, start, n_cfg)
        layer, head = (int(p) for p in node[1:].split("H"))
        index = INPUT_KINDS.index(kind)  # type: ignore[arg-type]
        x_in = inputs.resid_pre[layer][:, start:].repeat(n_cfg, 1, 1) - delta
        suffix = self.positions[start:]
        new = self._project(layer, fw.norm(x_in), index)[:, :, head: head + 1]  # [rows, p', 1, dh]
        parts = [inputs.q[layer], inputs.k[layer], inputs.v[layer]]
        qkv = [p[:, :, head: head + 1].repeat(n_cfg, 1, 1, 1) for p in parts]  # full positions, clean
        if index < 2:
            new = self.fw.rotate(new, suffix)
        qkv[index] = torch.cat([qkv[index][:, :start], new], dim=1)
        q, k, v = qkv
        stream = inputs.resid_pre[layer][:, start:].repeat(n_cfg, 1, 1)
        out_clean = clean.outputs[:, start:, g.head_sender(layer, head)].repeat(n_cfg, 1, 1)
        attn_clean = self._attn_clean(layer)[:, start:].repeat(n_cfg, 1, 1)
        if layer == g.n_layers - 1:  # only the final position matters from here: one query per row
            rows = torch.arange(final.shape[0], device=self.device)
            within = (final - start).clamp(min=0)
            _, z = fw.attend(layer, q[rows, final][:, None], k, v, final[:, None], per_query_head=True)
            stream, out_clean, attn_clean = (t[rows, within][:, None] for t in (stream, out_clean, attn_clean))
            start = 0  # the rows now hold their final positions only
            final = torch.zeros_like(final)
        else:
            _, z = fw.attend(layer, q[:, start:], k, v, suffix, per_query_head=True)
        out_new = torch.einsum("bpe,ed->bpd", z[:, :, 0], fw.w.W_O[layer][head])
        attn = attn_clean + out_new - out_clean
        if self.arch.parallel:
            mlp_in = stream
        else:
            mlp_in = stream + attn
        x = stream + attn + fw.mlp_out_from_hidden(layer, fw.mlp_hidden(layer, mlp_in))
        if layer == g.n_layers - 1:
            return self._per_prompt(x[:, 0], None)
        return self._finish(x, layer + 1, start, n_cfg)

    def _attn_clean(self, layer: int) -> Tensor:
        g = self.graph
        heads = self.clean.outputs[:, :, g.head_sender(layer, 0): g.head_sender(layer, 0) + g.n_heads]
        return heads.sum(dim=2) + self.fw.w.b_O[layer]

    def _resid_final_clean(self) -> Tensor:
        return self.clean.outputs.sum(dim=2) + self.fw.w.b_O.sum(dim=0)

    def _finish(self, x: Tensor, layer: int, start: int, n_cfg: int) -> Tensor:
        """Streams entering ``layer`` (positions ``start`` on) run to the end; the metric per row."""
        final = self.final_pos.repeat(n_cfg)
        if layer >= self.graph.n_layers:
            rows = torch.arange(x.shape[0], device=self.device)
            return self._per_prompt(x[rows, (final - start).clamp(min=0)], None)
        k_heads, v_heads = self._clean_kv_heads
        end = self.fw.run_layers(x, layer, from_mlp=False, start=start, prefix_k=k_heads, prefix_v=v_heads,
                                 final_pos=final, repeat=n_cfg)
        return self._per_prompt(end, None)

    @cached_property
    def _clean_kv_heads(self) -> tuple[Tensor, Tensor]:
        """The clean run's rotated keys and values per key/value head (what ForwardPass.qkv produces)."""
        group, inputs = self.arch.group_size, self._clean_inputs
        return inputs.k[:, :, :, ::group].contiguous(), inputs.v[:, :, :, ::group].contiguous()

    def release_clean_inputs(self) -> None:
        """Free what exact path patching keeps between calls (the clean run's inputs, and its keys and values
        per key/value head: 0.3 GB at GPT-2 small's size with 64 prompts); the next call recomputes them, to
        the bit. For a caller done with path patching for a while (the walk, before EAP)."""
        for name in ("_clean_inputs", "_clean_kv_heads"):
            self.__dict__.pop(name, None)

    @cached_property
    def _clean_inputs(self) -> _Plain:
        """The clean run again, keeping what the edge patches restart from (its inputs) and not the senders'
        outputs (:attr:`clean` has them): the same call on the same tokens, so the same values to the bit."""
        with torch.no_grad():
            return self._plain(self.clean_tokens, inputs=True, outputs=False)

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


def _through_norm(fw: ForwardPass, x: Tensor, read: Float[Tensor, "batch pos receiver d_model"]) -> Tensor:
    """Gradients with respect to the stream ``x`` a pre-norm reads, one per receiver, from the gradients
    ``read`` with respect to each receiver's normalised input: the norm's vector-Jacobian product, in
    closed form. With ``y = norm(x)`` and ``s`` the root mean square it divided by: RMSNorm gives
    ``(g - y * mean(g * y)) / s``; LayerNorm (which centres first) also subtracts ``mean(g)``."""
    centred = x - x.mean(dim=-1, keepdim=True) if fw.arch.normalization == "LN" else x
    scale = (centred.pow(2).mean(dim=-1, keepdim=True) + fw.arch.eps).sqrt()  # [batch, pos, 1]
    y = (centred / scale)[:, :, None]  # [batch, pos, 1, d_model]
    g = read - y * (read * y).mean(dim=-1, keepdim=True)
    if fw.arch.normalization == "LN":
        g = g - read.mean(dim=-1, keepdim=True)
    return g / scale[:, :, None]


def _slices(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


