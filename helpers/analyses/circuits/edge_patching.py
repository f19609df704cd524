"""Exact edge patching, one edge at a time: the effect (:mod:`.edge_runs`' docstring) of one edge ablated
to the corrupted run's output, everything else as in the clean run and recomputed downstream. This is the
IOI paper's path patching: only the receiver sees the sender's corrupted output.

Each edge's run starts at its receiver, from the clean run's inputs there (kept by :class:`ExactEdges`,
recomputed to the bit after a release): the receiver alone is recomputed at its layer (one head, or the
MLP, or the logits), the layer's other outputs are the clean run's, and the layers after it run through
the engine's layer loop from the first position where the prompts differ, with the clean run's keys and
values before it. Many edges into one receiver run at once, one copy of the prompts each.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property

import torch
from jaxtyping import Float
from torch import Tensor

from helpers.analyses.circuits.edge_runs import GraphRuns, PlainRun
from helpers.analyses.circuits.graph import INPUT_KINDS


class ExactEdges:
    """Exact patching of single edges on ``runs``' prompts, with the clean run's inputs it restarts from."""

    def __init__(self, runs: GraphRuns):
        self.runs = runs

    def edge_effects(self, receiver: int, senders: Sequence[int] | None = None) -> Float[Tensor, " sender"]:
        """The exact effect of each edge into ``receiver``: that one edge ablated to the corrupted run's
        output, everything else as in the clean run and recomputed downstream. Senders not asked for (or not
        feeding it) are NaN."""
        runs = self.runs
        g = runs.graph
        prefix = g.prefix[receiver]
        chosen = list(range(prefix)) if senders is None else [s for s in senders if s < prefix]
        out = torch.full((g.n_senders,), float("nan"), device=runs.device)
        if not chosen:
            return out
        per_chunk = max(1, runs.edge_rows // runs.final_pos.shape[0])
        with torch.no_grad():
            for start in range(0, len(chosen), per_chunk):
                group = chosen[start: start + per_chunk]
                per_prompt = self._one_edge_each(receiver, group)
                out[group] = runs.effect(per_prompt.view(len(group), -1))
        return out

    def _one_edge_each(self, receiver: int, senders: list[int]) -> Float[Tensor, " rows"]:
        """Per prompt, for each sender in turn (rows: sender-major), the metric with the one edge from it
        into ``receiver`` ablated (resample)."""
        runs = self.runs
        g, fw, clean = runs.graph, runs.fw, runs.clean
        assert clean.outputs is not None and runs.corrupted.outputs is not None
        n_cfg = len(senders)
        start = min(runs.first_difference, int(runs.final_pos.min()))
        delta = (clean.outputs[:, start:, senders] - runs.corrupted.outputs[:, start:, senders])  # [b, p', c, D]
        delta = delta.permute(2, 0, 1, 3).flatten(0, 1)  # [c * b, p', D]
        final = runs.final_pos.repeat(n_cfg)
        node, kind = g.receiver_parts(receiver)
        if node == "logits":
            within = (final - start).clamp(min=0)
            rows = torch.arange(final.shape[0], device=runs.device)
            stream = clean.final.repeat(n_cfg, 1) - delta[rows, within]
            return runs.per_prompt(stream, None)
        inputs = self.clean_inputs  # not before: the logits' edges read the clean outputs only
        assert inputs.resid_pre is not None and inputs.mlp_in is not None
        assert inputs.q is not None and inputs.k is not None and inputs.v is not None
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
        assert kind is not None
        index = INPUT_KINDS.index(kind)
        x_in = inputs.resid_pre[layer][:, start:].repeat(n_cfg, 1, 1) - delta
        suffix = runs.positions[start:]
        new = runs.project(layer, fw.norm(x_in), index)[:, :, head: head + 1]  # [rows, p', 1, dh]
        parts = [inputs.q[layer], inputs.k[layer], inputs.v[layer]]
        qkv = [p[:, :, head: head + 1].repeat(n_cfg, 1, 1, 1) for p in parts]  # full positions, clean
        if index < 2:
            new = fw.rotate(new, suffix)
        qkv[index] = torch.cat([qkv[index][:, :start], new], dim=1)
        q, k, v = qkv
        stream = inputs.resid_pre[layer][:, start:].repeat(n_cfg, 1, 1)
        out_clean = clean.outputs[:, start:, g.head_sender(layer, head)].repeat(n_cfg, 1, 1)
        attn_clean = self._attn_clean(layer)[:, start:].repeat(n_cfg, 1, 1)
        if layer == g.n_layers - 1:  # only the final position matters from here: one query per row
            rows = torch.arange(final.shape[0], device=runs.device)
            within = (final - start).clamp(min=0)
            _, z = fw.attend(layer, q[rows, final][:, None], k, v, final[:, None], per_query_head=True)
            stream, out_clean, attn_clean = (t[rows, within][:, None] for t in (stream, out_clean, attn_clean))
            start = 0  # the rows now hold their final positions only
            final = torch.zeros_like(final)
        else:
            _, z = fw.attend(layer, q[:, start:], k, v, suffix, per_query_head=True)
        out_new = torch.einsum("bpe,ed->bpd", z[:, :, 0], fw.w.W_O[layer][head])
        attn = attn_clean + out_new - out_clean
        if runs.arch.parallel:
            mlp_in = stream
        else:
            mlp_in = stream + attn
        x = stream + attn + fw.mlp_out_from_hidden(layer, fw.mlp_hidden(layer, mlp_in))
        if layer == g.n_layers - 1:
            return runs.per_prompt(x[:, 0], None)
        return self._finish(x, layer + 1, start, n_cfg)

    def _attn_clean(self, layer: int) -> Tensor:
        g, outputs = self.runs.graph, self.runs.clean.outputs
        assert outputs is not None
        heads = outputs[:, :, g.head_sender(layer, 0): g.head_sender(layer, 0) + g.n_heads]
        return heads.sum(dim=2) + self.runs.fw.w.b_O[layer]

    def _resid_final_clean(self) -> Tensor:
        outputs = self.runs.clean.outputs
        assert outputs is not None
        return outputs.sum(dim=2) + self.runs.fw.w.b_O.sum(dim=0)

    def _finish(self, x: Tensor, layer: int, start: int, n_cfg: int) -> Tensor:
        """Streams entering ``layer`` (positions ``start`` on) run to the end; the metric per row."""
        runs = self.runs
        final = runs.final_pos.repeat(n_cfg)
        if layer >= runs.graph.n_layers:
            rows = torch.arange(x.shape[0], device=runs.device)
            return runs.per_prompt(x[rows, (final - start).clamp(min=0)], None)
        k_heads, v_heads = self._clean_kv_heads
        end = runs.fw.run_layers(x, layer, from_mlp=False, start=start, prefix_k=k_heads, prefix_v=v_heads,
                                 final_pos=final, repeat=n_cfg)
        return runs.per_prompt(end, None)

    @cached_property
    def _clean_kv_heads(self) -> tuple[Tensor, Tensor]:
        """The clean run's rotated keys and values per key/value head (what ForwardPass.qkv produces)."""
        group, inputs = self.runs.arch.group_size, self.clean_inputs
        assert inputs.k is not None and inputs.v is not None
        return inputs.k[:, :, :, ::group].contiguous(), inputs.v[:, :, :, ::group].contiguous()

    @cached_property
    def clean_inputs(self) -> PlainRun:
        """The clean run again, keeping what the edge patches restart from (its inputs) and not the senders'
        outputs (``runs.clean`` has them): the same call on the same tokens, so the same values to the bit."""
        with torch.no_grad():
            return self.runs.plain(self.runs.clean_tokens, inputs=True, outputs=False)
