"""Edge attribution patching (EAP) and EAP with integrated gradients (EAP-IG): every edge's effect
estimated at once, ``(clean - corrupted sender output) . d metric / d receiver input``, from backward
passes through the graph's plain run (:mod:`.edge_runs`, whose docstring defines the effect)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from helpers.analyses.circuits.edge_runs import GraphRuns
from helpers.analyses.circuits.graph import EdgeScores
from helpers.models.forward import ForwardPass


def attribute(runs: GraphRuns, alphas: Sequence[float], method: str) -> EdgeScores:
    """``(clean - corrupted output of each sender) . mean over alphas of d metric / d receiver input``,
    summed over positions, with the gradients taken at the embeddings ``corrupted + alpha * (clean -
    corrupted)``: per chunk of prompts, the gradients with respect to every receiver's input are summed
    over the integration points first, then multiplied with the senders' differences in one matrix product
    (edges that do not exist are computed too, and set to NaN). ``alphas = [1.0]`` is EAP."""
    g, fw = runs.graph, runs.fw
    assert runs.clean.outputs is not None and runs.corrupted.outputs is not None
    scores = torch.zeros(g.n_senders, g.n_receivers, device=runs.device, dtype=runs.dtype)
    positions = torch.zeros(*runs.clean_tokens.shape, g.n_senders, device=runs.device)
    gap = runs.clean_value - runs.corrupted_value
    batch = runs.final_pos.shape[0]
    n = 3 * g.n_heads
    first_fed = first_receiver_fed(runs)
    for rows in runs.chunks():
        clean_embed = runs.clean.outputs[rows, :, 0]
        corrupted_embed = runs.corrupted.outputs[rows, :, 0]
        summed = clean_embed.new_zeros(g.n_receivers, *clean_embed.shape)  # [receiver, batch, pos, d_model]
        for alpha in alphas:
            embed = (corrupted_embed + alpha * (clean_embed - corrupted_embed)).detach()
            grads: dict[str, list[Tensor]] = {}
            with torch.enable_grad():
                run = runs.plain(runs.clean_tokens[rows], embed=embed, grads=grads, rows=rows)
                (run.per_prompt.sum() / (batch * gap)).backward()
            for layer in range(g.n_layers):
                read = torch.cat([torch.einsum("bphe,hde->bphd", grads[name][layer].grad, runs.W[i, layer])
                                  for i, name in enumerate("qkv")], dim=2)  # [batch, pos, 3 * heads, d_model]
                first = g.head_receiver(layer, 0, "q")
                summed[first: first + n] += through_norm(fw, grads["resid_pre"][layer].detach(), read).permute(2, 0, 1, 3)
                summed[g.mlp_receiver(layer)] += grads["mlp"][layer].grad
            summed[g.logits_receiver] += grads["logits"][0].grad
            del run, grads  # this point's run, before the next one's (0.14 GB at GPT-2 small's size)
        # [sender, batch, pos, d_model], computed into its sender-major layout (not a copy of it after)
        delta = summed.new_empty(g.n_senders, *clean_embed.shape)
        torch.sub(runs.clean.outputs[rows].permute(2, 0, 1, 3), runs.corrupted.outputs[rows].permute(2, 0, 1, 3),
                  out=delta)
        scores += (delta.flatten(1) @ summed.flatten(1).T) / len(alphas)
        # per position, each sender's attribution through all its edges: its difference times the sum of
        # the gradients of every receiver it feeds (a suffix of the receivers, in graph order)
        positions[rows] = (through_each_sender(summed, delta, first_fed) / len(alphas)).permute(1, 2, 0)
        del summed, delta
    scores = torch.where(g.real.to(runs.device), scores, torch.full_like(scores, float("nan")))
    return EdgeScores(runs.graph, scores, method, positions)


def first_receiver_fed(runs: GraphRuns) -> list[int]:
    """For each sender, the first receiver it feeds (receivers are in graph order, their prefixes rise)."""
    prefix = torch.tensor(runs.graph.prefix)
    return [int((prefix > s).nonzero()[0]) for s in range(runs.graph.n_senders)]


def through_each_sender(summed: Float[Tensor, "receiver *rest d_model"], delta: Float[Tensor, "sender *rest d_model"],
                        first_fed: Sequence[int]) -> Float[Tensor, "sender *rest"]:
    """For each sender, ``delta[sender]`` dotted (over ``d_model``) with the sum of ``summed`` over the
    receivers it feeds (from ``first_fed[sender]`` on), added from the last receiver back:
    ``(summed.flip(0).cumsum(0).flip(0)[first_fed] * delta).sum(-1)`` without that expression's copies of
    ``summed`` (0.4 GB each per 16 prompts at GPT-2 small's size, from the shapes): each sender's suffix
    sum is read as it is reached. On the CPU the running sum is kept in float64, as torch's cumsum keeps
    it there, and rounded to ``summed``'s dtype before the product, so the result is the same to the bit
    (tested)."""
    out = delta.new_empty(delta.shape[:-1])
    running = torch.zeros_like(summed[0], dtype=torch.float64 if summed.device.type == "cpu" else summed.dtype)
    senders_of: dict[int, list[int]] = {}
    for sender, receiver in enumerate(first_fed):
        senders_of.setdefault(receiver, []).append(sender)
    for receiver in range(summed.shape[0] - 1, -1, -1):
        running += summed[receiver]
        if receiver in senders_of:
            suffix = running.to(summed.dtype)
            for sender in senders_of[receiver]:
                out[sender] = (suffix * delta[sender]).sum(-1)
    return out


def through_norm(fw: ForwardPass, x: Tensor, read: Float[Tensor, "batch pos receiver d_model"]) -> Tensor:
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
