"""Running a model as its graph of edges (:mod:`.graph`) on a task's prompts: the plain runs every other
computation starts from, and circuits run edge by edge under three ablations. Scoring edges is
:mod:`.edge_attribution`'s and :mod:`.edge_patching`'s; :class:`.graph_runner.GraphRunner` puts the three
behind one object.

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

Every run here goes through the engine's layer loop (:meth:`helpers.models.forward.ForwardPass.run_layers`);
what the graph's runs do differently is a :class:`~helpers.models.forward.LayerStrategy` each: heads that
read their inputs through their own weights and keep their outputs (:class:`_SendersKept`), or inputs
built edge by edge (:class:`_EdgesMasked`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from helpers.analyses.ablations import ABLATION_KINDS, AblationKind, ReferencePrompts, template_position_table
from helpers.analyses.circuits.faithfulness import MIB_FRACTIONS, FaithfulnessByEdges, NormalisedFaithfulness
from helpers.analyses.circuits.graph import EdgeCircuit, EdgeScores, Graph, GraphError
from helpers.analyses.contrast import Contrast
from helpers.errors import NotApplicable
from helpers.models.forward import ForwardPass, LayerActivations, LayerStrategy, UnsupportedArchitecture
from helpers.models.hooks import final_logits
from helpers.tasks.metrics import at_final_pos
from helpers.tasks.prompts import PromptSet


@dataclass(frozen=True)
class PlainRun:
    """One unablated run: every sender's output and what the edge patches restart from."""

    # None in EAP's runs and in the clean inputs exact patching keeps (:meth:`GraphRuns.plain`)
    outputs: Float[Tensor, "batch pos sender d_model"] | None
    # what the edge patches restart from: the clean inputs exact patching keeps (None elsewhere)
    resid_pre: Float[Tensor, "layer batch pos d_model"] | None
    mlp_in: Float[Tensor, "layer batch pos d_model"] | None
    q: Float[Tensor, "layer batch pos head_index d_head"] | None  # rotated, per query head
    k: Float[Tensor, "layer batch pos head_index d_head"] | None
    v: Float[Tensor, "layer batch pos head_index d_head"] | None
    final: Float[Tensor, "batch d_model"]
    per_prompt: Float[Tensor, " scored"]  # one per prompt (none for prompts without a metric)


class GraphRuns:
    """The model run as its graph on a task's prompts: the clean and corrupted plain runs, the task metric
    normalised between them, ablated outputs, and circuits run edge by edge.
    :class:`.graph_runner.GraphRunner` adds the edges' scores.

    Args:
        model: a model loaded by :func:`helpers.models.load.load_model`.
        prompts: the task's prompts (clean and corrupted of equal lengths).
        reference: what ``mean`` ablation averages over (a
            :class:`helpers.analyses.ablations.ReferencePrompts`); the corrupted prompts when None.
        max_rows: at most this many prompts in one forward pass that carries every sender's output (running
            circuits, attribution).
        edge_rows: at most this many rows (a copy of a prompt each, one residual stream) in one run of exact
            path patching, which patches one edge per copy.

    Raises:
        NotApplicable: the model's heads do not each write to the residual stream on their own (Gemma 2's
            post-attention norm): there are no edges.
        UnsupportedArchitecture: the engine's forward pass does not reproduce the model.
    """

    def __init__(self, model: Any, prompts: PromptSet, *, reference: Any = None, max_rows: int = 64,
                 edge_rows: int = 256):
        if model.training:
            raise ValueError("the graph needs model.eval(); load the model with helpers.models.load.load_model")
        self.fw = fw = ForwardPass(model)
        if not fw.linear_heads:
            raise NotApplicable(
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
            # patching only: it recomputes them, to the bit, when it first asks
            self.clean = self.plain(self.clean_tokens)
            self.corrupted = self.plain(self.corrupted_tokens)
            own = self.per_prompt(final_logits(model, self.clean_tokens, self.final_pos).float(), None, logits=True)
        error = float((own - self.clean.per_prompt).abs().max())
        scale = float(own.abs().max()) + 1.0
        if not error <= 1e-3 * scale:
            raise UnsupportedArchitecture(f"the graph's forward pass differs from the model's by {error:.2g} in the task "
                                          "metric: this architecture is not run edge by edge")
        assert self.clean.outputs is not None and self.corrupted.outputs is not None
        self.dtype = self.clean.outputs.dtype
        self.clean_value = float(self.clean.per_prompt.mean())
        self.corrupted_value = float(self.corrupted.per_prompt.mean())
        if self.clean_value == self.corrupted_value:
            raise GraphError("the clean and corrupted runs give the same metric: there is nothing to attribute")
        self._reference = reference
        self._alternatives: dict[AblationKind, Tensor | tuple[Tensor, Tensor]] = {}
        self._anchor_values: dict[AblationKind, tuple[float, float]] = {}
        self.first_difference = contrast.first_difference

    # -- each head's own weights, the metric ----------------------------------------------------------

    def project(self, layer: int, normed: Tensor, kind: int) -> Tensor:
        """One input kind (0 q, 1 k, 2 v) of every head from per-head normalised inputs ``[rows, pos, head, D]``
        (or one shared input ``[rows, pos, D]``)."""
        if normed.ndim == 3:
            return torch.einsum("bpd,hde->bphe", normed, self.W[kind, layer]) + self.b[kind, layer]
        return torch.einsum("bphd,hde->bphe", normed, self.W[kind, layer]) + self.b[kind, layer]

    def heads_out(self, layer: int, z: Tensor) -> Tensor:
        """Each head's output ``[rows, pos, head, d_model]`` (without ``b_O``)."""
        return torch.einsum("bphe,hed->bphd", z, self.fw.w.W_O[layer])

    def per_prompt(self, final: Tensor, rows: slice | None, *, logits: bool = False) -> Tensor:
        """The task metric per row from final streams (or, with ``logits``, final logits)."""
        answers = self.answers if rows is None else self.answers.select(list(range(self.final_pos.shape[0]))[rows])
        if logits:
            return answers(final)
        if answers.is_linear:
            repeat = final.shape[0] // answers.tokens.shape[0]
            tokens, weights = answers.tokens.repeat(repeat, 1), answers.weights.to(final.dtype).repeat(repeat, 1)
            return (self.fw.answer_logits(final, tokens) * weights).sum(-1)
        return answers(self.fw.unembed(final).float())

    def chunks(self) -> Iterator[slice]:
        """The prompts, ``max_rows`` at a time."""
        return _slices(self.final_pos.shape[0], self.max_rows)

    def normalised(self, per_prompt: Float[Tensor, "*config batch"]) -> Float[Tensor, "*config"]:
        """Mean over prompts, 0 = corrupted run, 1 = clean run."""
        return (per_prompt.mean(dim=-1) - self.corrupted_value) / (self.clean_value - self.corrupted_value)

    def effect(self, per_prompt: Float[Tensor, "*config batch"]) -> Float[Tensor, "*config"]:
        """How much of the clean-corrupted difference is lost: 1 - normalised."""
        return 1.0 - self.normalised(per_prompt)

    # -- the plain run --------------------------------------------------------------------------------

    def plain(self, tokens: Tensor, *, embed: Tensor | None = None, grads: dict[str, list[Tensor]] | None = None,
              rows: slice | None = None, metric: bool = True, inputs: bool = False, outputs: bool = True,
              into: Tensor | None = None) -> PlainRun:
        """The model on the task's prompts ``tokens`` (``rows`` of them; or from the embeddings ``embed``),
        keeping every sender's output, and with ``inputs`` what the edge patches restart from. With
        ``grads`` (EAP's runs), the inputs whose gradients EAP reads are recorded there (retaining their
        gradients), and the stream entering each layer (``resid_pre``, for the chain rule through the norm);
        the senders' outputs are not kept (EAP reads the clean and corrupted runs', 0.14 GB per 16 prompts at
        GPT-2 small's size, from the shapes). With ``metric=False`` (other prompts), no metric is computed.
        ``into``: where to write the senders' outputs (``[batch, pos, sender, d_model]``, e.g. a slice of a
        larger buffer), instead of a tensor of their own. With ``outputs=False``, the senders' outputs are not
        kept (exact patching's clean inputs: :attr:`clean` has them)."""
        x = self.fw.embed(tokens) if embed is None else embed
        if grads is not None:
            x = x.detach().requires_grad_(True)
        # every sender's output, written in place as it is computed (stacking a list of them held two copies)
        kept_outputs = (into if into is not None else x.new_empty(*x.shape[:2], self.graph.n_senders, x.shape[-1])
                        ) if grads is None and outputs else None
        if kept_outputs is not None:
            kept_outputs[:, :, 0] = x.detach()
        run = _SendersKept(self, kept_outputs, grads, inputs)
        x = self.fw.run_layers(x, strategy=run)
        if grads is not None:
            x.retain_grad()
            grads["logits"] = [x]
        final = at_final_pos(x, self.final_pos[rows] if rows is not None else self.final_pos) if metric else x[:, -1]
        kept = [torch.stack(t) if inputs else None for t in (run.resid_pre, run.mlp_ins, run.qs, run.ks, run.vs)]
        return PlainRun(kept_outputs, *kept, final, self.per_prompt(final, rows) if metric else final.new_zeros(0))

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

    def alternative_at_final(self, kind: AblationKind) -> Float[Tensor, "batch sender d_model"]:
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
            assert self.clean.outputs is not None
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
                        self.plain(tokens[rows], metric=False, into=outputs[rows])
                shifted = ReferencePrompts(reference.name, reference.tokens, reference.final_pos.to(self.device),
                                           reference.template_index)
                value = template_position_table(outputs, shifted, self.prompts)
            assert value is not None
            self._alternatives[kind] = value
        return self._alternatives[kind]

    # -- running circuits -----------------------------------------------------------------------------

    def run(self, keep: Float[Tensor, "sender receiver"], ablation: AblationKind = "resample") -> Float[Tensor, " batch"]:
        """The task metric per prompt when only the edges where ``keep`` is 1 carry their sender's output and
        the others carry ``ablation``'s (see the module docstring)."""
        keep = keep.to(self.device, self.dtype)
        with torch.no_grad():
            return torch.cat([self.masked(self.clean_tokens[rows], keep, self.alternative(ablation, rows), rows)[0]
                              for rows in self.chunks()])

    def masked(self, tokens: Tensor, keep: Tensor, alt: Tensor, rows: slice) -> tuple[Tensor, _EdgesMasked]:
        """The metric per prompt of ``tokens`` (the prompts ``rows``) run edge by edge: the edges where
        ``keep`` is 1 carry their senders' outputs, the others ``alt``; and the run, with what it computed."""
        run = _EdgesMasked(self, keep, alt, self.fw.embed(tokens))
        x = self.fw.run_layers(run.embed, strategy=run)
        final_stream = at_final_pos(run.inputs(x, run.bias, self.graph.logits_receiver, self.graph.n_senders),
                                    self.final_pos[rows])
        run.final = final_stream
        return self.per_prompt(final_stream, rows), run

    def direct_effects(self, keep: Float[Tensor, "sender receiver"] | None = None,
                       ablation: AblationKind = "mean") -> Float[Tensor, " sender"]:
        """Each sender's direct effect on the metric (the effect of ablating its edge to the logits alone,
        to the corrupted run's output) in the run where ``keep`` holds (every edge by default) and the
        other edges carry ``ablation``'s outputs: e.g. the heads' direct effects once the name movers are
        ablated, which is how backup name movers show themselves."""
        g = self.graph
        keep = (g.real.float() if keep is None else keep).to(self.device, self.dtype)
        assert self.corrupted.outputs is not None
        corrupted_final = at_final_pos(self.corrupted.outputs, self.final_pos)  # [batch, sender, d_model]
        with torch.no_grad():
            per_prompt, finals, outs = [], [], []
            for rows in self.chunks():
                alt = self.alternative(ablation, rows)
                metric, run = self.masked(self.clean_tokens[rows], keep, alt, rows)
                per_prompt.append(metric)
                finals.append(run.final)
                # each sender's output in this run, at the final positions only
                final_pos = self.final_pos[rows]
                outs.append(at_final_pos(run.diffs.permute(1, 2, 0, 3), final_pos) + at_final_pos(alt, final_pos))
            base, final, outputs = torch.cat(per_prompt), torch.cat(finals), torch.cat(outs)
            # the stream the logits read changes by (ablated - carried) of the one sender's edge, if kept
            carried = torch.where(keep[:, g.logits_receiver].bool()[None, :, None], outputs,
                                  self.alternative_at_final(ablation))
            change = corrupted_final - carried  # [batch, sender, d_model]
            stream = (final[:, None] + change).transpose(0, 1).flatten(0, 1)  # [sender * batch, d_model]
            batch = self.final_pos.shape[0]
            without = self.per_prompt(stream, None).view(g.n_senders, batch)
        return self.normalised(base) - self.normalised(without)

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


# -- the graph's two layer strategies ----------------------------------------------------------------


class _SendersKept(LayerStrategy):
    """The plain run: each head reads the stream through its own weights (:meth:`GraphRuns.project`) and
    writes its own output, which is kept (``outputs``, sender by sender); with ``inputs``, every layer's
    inputs are kept too (``resid_pre``, ``mlp_ins``, rotated ``qs``, ``ks``, ``vs``); with ``grads`` (EAP),
    the queries, keys, values and the MLP's reads retain their gradients there, and ``resid_pre`` is kept."""

    def __init__(self, runs: GraphRuns, outputs: Tensor | None, grads: dict[str, list[Tensor]] | None, inputs: bool):
        self.runs, self.outputs, self.grads, self.inputs = runs, outputs, grads, inputs
        self.resid_pre: list[Tensor] = []
        self.mlp_ins: list[Tensor] = []
        self.qs: list[Tensor] = []
        self.ks: list[Tensor] = []
        self.vs: list[Tensor] = []
        if grads is not None:
            grads["resid_pre"] = self.resid_pre

    def qkv(self, fw: ForwardPass, layer: int, x: Tensor, positions: Int[Tensor, " pos"]) -> tuple[Tensor, Tensor, Tensor]:
        if self.inputs or self.grads is not None:  # else nothing holds a layer's inputs past it (0.2 GB at GPT-2 small's size)
            self.resid_pre.append(x)
        normed = fw.norm(x)
        q, k, v = (self.runs.project(layer, normed, kind) for kind in range(3))
        if self.grads is not None:
            for name, tensor in (("q", q), ("k", k), ("v", v)):
                tensor.retain_grad()
                self.grads.setdefault(name, []).append(tensor)
        q, k = fw.rotate(q, positions), fw.rotate(k, positions)
        if self.inputs:
            self.qs.append(q)
            self.ks.append(k)
            self.vs.append(v)
        return q, k, v

    def attn_out(self, fw: ForwardPass, layer: int, z: Tensor) -> Tensor:
        heads = self.runs.heads_out(layer, z)
        if self.outputs is not None:
            head_0 = self.runs.graph.head_sender(layer, 0)
            self.outputs[:, :, head_0: head_0 + fw.n_heads] = heads.detach()
        return heads.sum(dim=2) + fw.w.b_O[layer]

    def mlp_read(self, layer: int, mlp_in: Tensor) -> Tensor:
        if self.inputs:
            self.mlp_ins.append(mlp_in)
        if self.grads is None:
            return mlp_in
        read = torch.zeros_like(mlp_in, requires_grad=True)
        self.grads.setdefault("mlp", []).append(read)
        return mlp_in + read

    def layer(self, layer: int, acts: LayerActivations) -> None:
        if self.outputs is not None:
            self.outputs[:, :, self.runs.graph.mlp_sender(layer)] = acts.mlp_out.detach()


class _EdgesMasked(LayerStrategy):
    """A run edge by edge: every receiver reads its own input, in which the edges where ``keep`` is 1 carry
    their senders' outputs in this run and the others ``alt`` (the ablated outputs). ``diffs`` holds each
    sender's output minus its ablated output, sender-major (a receiver's senders are a prefix, a slice),
    ``bias`` the biases (``b_O``) the stream holds so far; ``final`` is set by :meth:`GraphRuns.masked`."""

    def __init__(self, runs: GraphRuns, keep: Tensor, alt: Tensor, embed: Tensor):
        self.runs, self.keep, self.alt, self.embed = runs, keep, alt, embed
        self.batch, self.width, self.d_model = embed.shape
        self.diffs = embed.new_empty(runs.graph.n_senders, self.batch, self.width, self.d_model)
        self.diffs[0] = embed - alt[:, :, 0]
        self.bias = torch.zeros_like(embed[0, 0])
        self.final: Tensor | None = None

    def inputs(self, stream: Tensor, bias: Tensor, receivers: slice | int, prefix: int) -> Tensor:
        """Each receiver's input: the biases, every sender's ablated output, and for each kept edge
        (output - ablated output); a receiver whose every edge carries zero reads exactly zero. ``stream``
        is the stream with every edge kept (the sum of the senders' outputs and the biases)."""
        mask = self.keep[:prefix, receivers]
        if bool((mask == 1).all()):
            return stream  # one stream every receiver shares
        base = bias + self.alt[:, :, :prefix].sum(dim=2)
        if mask.ndim == 1:
            return base + torch.tensordot(mask, self.diffs[:prefix], dims=1)
        kept = (mask.T @ self.diffs[:prefix].flatten(1)).view(-1, self.batch, self.width, self.d_model)
        return base[:, :, None] + kept.permute(1, 2, 0, 3)

    def qkv(self, fw: ForwardPass, layer: int, x: Tensor, positions: Int[Tensor, " pos"]) -> tuple[Tensor, Tensor, Tensor]:
        g, n = self.runs.graph, self.runs.graph.n_heads
        first = g.head_receiver(layer, 0, "q")
        normed = fw.norm(self.inputs(x, self.bias, slice(first, first + 3 * n), g.prefix[first]))
        if normed.ndim == 3:
            q, k, v = (self.runs.project(layer, normed, kind) for kind in range(3))
        else:
            q, k, v = (self.runs.project(layer, normed[:, :, kind * n:(kind + 1) * n], kind) for kind in range(3))
        return fw.rotate(q, positions), fw.rotate(k, positions), v

    def attn_out(self, fw: ForwardPass, layer: int, z: Tensor) -> Tensor:
        g = self.runs.graph
        heads = self.runs.heads_out(layer, z)
        head_0 = g.head_sender(layer, 0)
        self.diffs[head_0: head_0 + g.n_heads] = (heads - self.alt[:, :, head_0: head_0 + g.n_heads]).permute(2, 0, 1, 3)
        return heads.sum(dim=2) + fw.w.b_O[layer]

    def mlp_read(self, layer: int, mlp_in: Tensor) -> Tensor:
        mlp, b_O = self.runs.graph.mlp_receiver(layer), self.runs.fw.w.b_O[layer]
        bias = self.bias if self.runs.arch.parallel else self.bias + b_O
        return self.inputs(mlp_in, bias, mlp, self.runs.graph.prefix[mlp])

    def layer(self, layer: int, acts: LayerActivations) -> None:
        mlp = self.runs.graph.mlp_sender(layer)
        self.diffs[mlp] = acts.mlp_out - self.alt[:, :, mlp]
        self.bias = self.bias + self.runs.fw.w.b_O[layer]


def _slices(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))
