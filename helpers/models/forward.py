"""The patching engine's own forward pass, on a compatibility-mode model's weights.

Why re-implement the model: exact activation patching only needs what changes after a patch. Having the
forward pass in pieces (embed, one block's attention, its MLP, unembed) lets the engine restart a
patched run at the patched layer from cached activations, reuse the unchanged keys and values of the
positions before a patch, and compute logits only where the metric reads them
(:mod:`helpers.analyses.patching.engine`). The pieces follow the model's own arithmetic for each architecture family
(:mod:`helpers.models.architectures`): learned or rotary positions, sequential or parallel blocks, LayerNorm or
RMSNorm, plain or gated MLPs, grouped-query attention, attention scales, local windows, Gemma 2's
post-norms and soft caps.

Compatibility mode has folded every pre-norm's weight and bias into the next linear layer (``W_Q`` ...
``W_in``, ``W_U``), so a norm here only centres (LayerNorm) and divides by the root mean square. Gemma 2's
post-norms cannot be folded (their output joins the residual stream directly) and keep their weights.

:class:`ForwardPass` is checked by the engine against the model's own logits before it is trusted; an
architecture it gets wrong falls back to patching through the model's hooks.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor
from torch.utils.checkpoint import checkpoint
from transformers.activations import ACT2FN

from helpers.errors import SuiteError
from helpers.models.architectures import Architecture, describe
from helpers.models.load import post_norm_weights, stacked_weight


class UnsupportedArchitecture(SuiteError, RuntimeError):
    """The engine has no forward pass for this model; the message says why."""


_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_GELU_ROWS = 128  # rows of a block on the CPU: a block's intermediate values stay in the cache


def new_gelu(x: Tensor) -> Tensor:
    """GPT-2's GELU (transformers' ``gelu_new``: ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``), the
    same operations in the same order, so the same bits, without its six intermediate tensors: in place, and
    on the CPU a block of rows at a time. It took about 0.33 s for a GPT-2 MLP's 4608 x 3072 activations,
    more than the matrix product before it; this takes about 0.09 s (2 cores). With gradients to record it
    is transformers' own, checkpointed: the backward pass keeps only ``x`` and recomputes the rest (the same
    operations on the same input, so the same gradients to the bit), where autograd would keep four
    intermediate tensors of ``x``'s size (0.06 GB per GPT-2 layer on 64 prompts of 18 tokens)."""
    if torch.is_grad_enabled() and x.requires_grad:

        return checkpoint(ACT2FN["gelu_new"], x, use_reentrant=False)
    rows = x.reshape(-1, x.shape[-1])
    out = torch.empty_like(rows)
    step = _GELU_ROWS if x.device.type == "cpu" else max(1, rows.shape[0])
    scratch = torch.empty((min(step, rows.shape[0]), rows.shape[1]), dtype=x.dtype, device=x.device)
    for start in range(0, rows.shape[0], step):
        block, into = rows[start: start + step], out[start: start + step]
        inner = scratch[: block.shape[0]]
        torch.pow(block, 3.0, out=inner)
        inner.mul_(0.044715).add_(block).mul_(_SQRT_2_OVER_PI).tanh_().add_(1.0)
        torch.mul(block, 0.5, out=into).mul_(inner)
    return out.view(x.shape)


def _model_own(model: Any, stacked: Tensor) -> Tensor | tuple[Tensor, ...]:
    """``stacked`` (``[layer, ...]``) as the model's own parameters, one per layer, where each layer's slice
    is one of that block's parameters to the bit, of the same dtype and device and laid out alike
    (contiguous, of the slice's shape); otherwise ``stacked`` itself. A layer indexes either the same way,
    and a matrix product reads the same numbers in the same order from either; the parameters cost no copy
    (W_in, W_out and W_O are 0.25 GB at GPT-2 small's size, where the bridge holds them as they are used
    here; other families' bridges hold them transposed, as nn.Linear does, and keep the stacked copy)."""
    views = []
    for layer, block in enumerate(model.blocks):
        target = stacked[layer]
        found = None
        for param in block.parameters():
            own = param.detach()
            if (own.shape == target.shape and own.dtype == target.dtype and own.device == target.device
                    and own.is_contiguous() and torch.equal(own, target)):
                found = own
                break
        if found is None:
            return stacked
        views.append(found)
    return tuple(views)


@dataclass(frozen=True)
class Weights:
    """The compatibility-mode weights, stacked once (the model's ``W_Q`` etc. restack on every access), or,
    per layer, the model's own parameters where those hold them as they are used (:func:`_model_own`).
    Either is indexed by layer first."""

    W_E: Tensor
    W_pos: Tensor | None
    W_QKV: Tensor  # [layer, d_model, (n_heads + 2 * n_kv_heads) * d_head]: q, k and v as one matmul
    b_QKV: Tensor  # [layer, (n_heads + 2 * n_kv_heads) * d_head]
    W_O: Tensor | tuple[Tensor, ...]  # [layer][n_heads, d_head, d_model]
    W_O_flat: Tensor | tuple[Tensor, ...]  # [layer][n_heads * d_head, d_model]
    b_O: Tensor
    W_in: Tensor | tuple[Tensor, ...]
    W_gate: Tensor | None
    b_in: Tensor
    W_out: Tensor | tuple[Tensor, ...]
    b_out: Tensor
    W_U: Tensor
    b_U: Tensor
    attn_post: Tensor | None  # [layer, d_model]: Gemma 2's post-attention norm weight (offset included)
    mlp_post: Tensor | None
    model_ref: Any = None  # a weak reference to the model they were stacked from

    @classmethod
    def of(cls, model: Any, arch: Architecture) -> Weights:
        n_layers, d_model = arch.n_layers, model.cfg.d_model
        dtype = model.W_U.dtype

        def flat(w: Tensor) -> Tensor:  # [layer, head, d_model, d_head] -> [layer, d_model, head * d_head]
            return w.permute(0, 2, 1, 3).reshape(n_layers, d_model, -1)

        w_q, w_k, w_v = model.W_Q.detach(), model.W_K.detach(), model.W_V.detach()
        biases = [stacked_weight(model, name).reshape(n_layers, -1) for name in ("b_Q", "b_K", "b_V")]
        post = None
        if arch.post_norms:
            post = [post_norm_weights(model, name).to(dtype) for name in ("ln1_post", "ln2_post")]
        w_o = model.W_O.detach()
        w_o_flat = _model_own(model, w_o.reshape(n_layers, -1, d_model))  # a view of w_o if not the model's
        if isinstance(w_o_flat, tuple):
            w_o = tuple(flat_o.view(w_o.shape[1:]) for flat_o in w_o_flat)
        return cls(
            W_E=model.W_E.detach(),
            W_pos=model.W_pos.detach() if arch.learned_positions else None,
            W_QKV=torch.cat([flat(w_q), flat(w_k), flat(w_v)], dim=-1).contiguous(),
            b_QKV=torch.cat(biases, dim=-1),
            W_O=w_o,
            W_O_flat=w_o_flat,
            b_O=stacked_weight(model, "b_O"),
            W_in=_model_own(model, model.W_in.detach()),
            W_gate=model.W_gate.detach() if arch.gated_mlp else None,
            b_in=stacked_weight(model, "b_in"),
            W_out=_model_own(model, model.W_out.detach()),
            b_out=stacked_weight(model, "b_out"),
            W_U=model.W_U.detach(),
            b_U=stacked_weight(model, "b_U"),
            attn_post=None if post is None else post[0],
            mlp_post=None if post is None else post[1],
            model_ref=weakref.ref(model),
        )


# Weights stacked for a model, shared by every forward pass on it that is alive: a notebook's engines (two
# patching engines, a graph runner) hold one copy between them, about 0.5 GB at GPT-2 small's size, and it
# is freed with the last of them (a template's namespace emptied).
_SHARED: weakref.WeakValueDictionary[tuple[int, str, str], Weights] = weakref.WeakValueDictionary()


def shared_weights(model: Any, arch: Architecture) -> Weights:
    """:meth:`Weights.of` the model, the copy already stacked for it if one is still in use. Keyed by the
    model and by its device and dtype (a model moved or cast gets a fresh copy)."""
    key = (id(model), str(model.cfg.device), str(model.cfg.dtype))
    found = _SHARED.get(key)
    if found is None or found.model_ref() is not model:
        found = Weights.of(model, arch)
        _SHARED[key] = found
    return found


@dataclass(frozen=True)
class LayerActivations:
    """One layer's activations in a run of :meth:`ForwardPass.run_layers`. ``mlp_in`` is the stream the MLP
    reads: the stream after attention, or (parallel blocks) the stream entering the layer; ``k`` and ``v``
    are the layer's own positions' (per key/value head)."""

    resid_pre: Tensor
    mlp_in: Tensor
    attn_out: Tensor
    mlp_out: Tensor
    k: Tensor
    v: Tensor
    pattern: Tensor
    z: Tensor


class LayerStrategy:
    """What sets one kind of run of :meth:`ForwardPass.run_layers` apart: what it keeps (the engine's
    activations and gradients), and, for the graph of edges, how each layer reads its inputs and writes its
    attention's output. This one keeps nothing and changes nothing: the model's own forward pass."""

    def qkv(self, fw: ForwardPass, layer: int, x: Tensor, positions: Int[Tensor, " pos"]) -> tuple[Tensor, Tensor, Tensor]:
        """The queries, keys and values ``layer`` reads from the stream ``x`` entering it (rotated)."""
        return fw.qkv(layer, x, positions)

    def values(self, layer: int, v: Tensor) -> Tensor:
        """The values ``layer``'s attention reads (``v`` as computed; a strategy may lay them out per query
        head to keep their gradient)."""
        return v

    def attention(self, layer: int, v: Tensor, pattern: Tensor, z: Tensor) -> None:
        """The values read, the pattern and ``z`` of ``layer``, as its attention computed them."""

    def attn_out(self, fw: ForwardPass, layer: int, z: Tensor) -> Tensor:
        """What ``layer``'s attention adds to the stream, from every head's ``z``."""
        return fw.attn_out(layer, z)

    def mlp_read(self, layer: int, mlp_in: Tensor) -> Tensor:
        """What ``layer``'s MLP reads, from the stream ``mlp_in`` it would read in the model."""
        return mlp_in

    def hidden(self, layer: int, hidden: Tensor) -> None:
        """The neuron activations of ``layer``'s MLP."""

    def layer(self, layer: int, acts: LayerActivations) -> None:
        """``layer``'s activations once it has run."""


_MODEL_ITSELF = LayerStrategy()


class ForwardPass:
    """One model's forward pass in pieces. Shapes: ``x`` is ``[batch, pos, d_model]``; ``q`` is
    ``[batch, pos, n_heads, d_head]``, ``k`` and ``v`` ``[batch, pos, n_kv_heads, d_head]``; a pattern is
    ``[batch, n_heads, query_pos, key_pos]``; ``z`` is ``[batch, pos, n_heads, d_head]``."""

    def __init__(self, model: Any, arch: Architecture | None = None):
        self.arch = arch if arch is not None else describe(model)
        if self.arch.family is None:
            raise UnsupportedArchitecture(f"the suite has no forward pass for the '{self.arch.model_type}' architecture")

        if self.arch.act_fn not in ACT2FN:
            raise UnsupportedArchitecture(f"activation function {self.arch.act_fn!r} is not implemented by the engine")
        self.activation = new_gelu if self.arch.act_fn == "gelu_new" else ACT2FN[self.arch.act_fn]
        self.model = model
        self.w = shared_weights(model, self.arch)
        self.n_layers, self.n_heads = self.arch.n_layers, self.arch.n_heads
        self._rotary_cache: dict[int, tuple[Tensor, Tensor]] = {}

    # -- pieces ----------------------------------------------------------------------------------------

    def norm(self, x: Tensor) -> Tensor:
        """A folded pre-norm: centre (LayerNorm only), then divide by the root mean square."""
        if self.arch.normalization == "LN":
            x = x - x.mean(dim=-1, keepdim=True)
        return x / (x.pow(2).mean(dim=-1, keepdim=True) + self.arch.eps).sqrt()

    def _post_norm(self, x: Tensor, weight: Tensor | None) -> Tensor:
        if weight is None:
            return x
        normed = x.float() * torch.rsqrt(x.float().pow(2).mean(dim=-1, keepdim=True) + self.arch.eps)
        return (normed * weight.float()).to(x.dtype)

    def embed(self, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_model"]:
        x = self.w.W_E[tokens]
        if self.arch.embed_scale != 1.0:
            x = x * torch.tensor(self.arch.embed_scale, dtype=x.dtype)
        if self.w.W_pos is not None:
            x = x + self.w.W_pos[: tokens.shape[1]]
        return x

    def qkv(self, layer: int, x: Tensor, positions: Int[Tensor, " pos"]) -> tuple[Tensor, Tensor, Tensor]:
        """Queries, keys and values of the stream ``x`` at absolute ``positions``, rotated if rotary."""
        arch = self.arch
        qkv = self.norm(x) @ self.w.W_QKV[layer] + self.w.b_QKV[layer]
        q_width, kv_width = arch.n_heads * arch.d_head, arch.n_kv_heads * arch.d_head
        q, k, v = qkv.split([q_width, kv_width, kv_width], dim=-1)
        q = q.unflatten(-1, (arch.n_heads, arch.d_head))
        k = k.unflatten(-1, (arch.n_kv_heads, arch.d_head))
        v = v.unflatten(-1, (arch.n_kv_heads, arch.d_head))
        if arch.rotary_dim:
            cos, sin = self._rotary(positions, x.dtype)
            q, k = self._rotate(q, cos, sin), self._rotate(k, cos, sin)
        return q, k, v

    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor, query_pos: Tensor, *,
               per_query_head: bool = False) -> tuple[Tensor, Tensor]:
        """(pattern, z) for queries at absolute positions ``query_pos`` (``[q]`` or ``[rows, q]``) over all
        keys (positions 0 onwards). With ``per_query_head``, ``k`` and ``v`` already hold one head per
        head of ``q`` (any number of heads, e.g. one)."""
        if not per_query_head:
            k, v = self.by_query_head(k), self.by_query_head(v)
        scores = torch.einsum("bqhd,bkhd->bhqk", q.float(), k.float()) * self.arch.attn_scales[layer]
        if self.arch.attn_softcap:
            scores = self.arch.attn_softcap * torch.tanh(scores / self.arch.attn_softcap)
        key_pos = torch.arange(k.shape[1], device=k.device)
        hidden = key_pos > query_pos[..., None]  # [(rows,) q, k]
        window = self.arch.windows[layer]
        if window is not None:
            hidden = hidden | (key_pos <= query_pos[..., None] - window)
        hidden = hidden[:, None] if hidden.ndim == 3 else hidden
        pattern = scores.masked_fill(hidden, float("-inf")).softmax(dim=-1).to(v.dtype)
        return pattern, torch.einsum("bhqk,bkhd->bqhd", pattern, v)

    def by_query_head(self, kv: Tensor) -> Tensor:
        """Keys or values laid out per query head (each key/value head repeated for its group); already
        per query head, they are returned as they are."""
        group = self.arch.group_size
        return kv if group == 1 or kv.shape[-2] == self.arch.n_heads else kv.repeat_interleave(group, dim=-2)

    def attn_out(self, layer: int, z: Tensor) -> Tensor:
        """What the attention of ``layer`` adds to the stream, from every head's ``z``."""
        out = z.flatten(-2) @ self.w.W_O_flat[layer] + self.w.b_O[layer]
        return self._post_norm(out, None if self.w.attn_post is None else self.w.attn_post[layer])

    @property
    def linear_heads(self) -> bool:
        """Whether each head adds ``z @ W_O`` to the stream on its own (no post-norm couples the heads)."""
        return self.w.attn_post is None

    def mlp_hidden(self, layer: int, x: Tensor) -> Tensor:
        """The MLP's neuron activations (``hook_post``) for the stream ``x`` it reads."""
        normed = self.norm(x)
        pre = normed @ self.w.W_in[layer] + self.w.b_in[layer]
        if self.w.W_gate is None:
            return self.activation(pre)
        return self.activation(normed @ self.w.W_gate[layer]) * pre

    def mlp_out_from_hidden(self, layer: int, hidden: Tensor) -> Tensor:
        out = hidden @ self.w.W_out[layer] + self.w.b_out[layer]
        return self._post_norm(out, None if self.w.mlp_post is None else self.w.mlp_post[layer])

    def unembed(self, x: Tensor) -> Tensor:
        """Full-vocabulary logits of final streams."""
        return self.cap_logits(self.norm(x) @ self.w.W_U + self.w.b_U)

    def answer_logits(self, x: Tensor, tokens: Int[Tensor, "rows k"]) -> Float[Tensor, "rows k"]:
        """Only the logits of ``tokens`` (per row) of final streams ``x`` ``[rows, d_model]``."""
        logits = torch.einsum("rd,drk->rk", self.norm(x), self.w.W_U[:, tokens]) + self.w.b_U[tokens]
        return self.cap_logits(logits)

    def cap_logits(self, logits: Tensor) -> Tensor:
        cap = self.arch.final_softcap
        return logits if not cap else cap * torch.tanh(logits / cap)

    def run_layers(self, x: Tensor, layer: int = 0, *, from_mlp: bool = False, start: int = 0,
                   prefix_k: Tensor | None = None, prefix_v: Tensor | None = None,
                   final_pos: Int[Tensor, " rows"] | None = None, repeat: int = 1,
                   strategy: LayerStrategy | None = None) -> Tensor:
        """The layer loop: run streams from ``layer`` to the end of the model. Every sweep, patch and graph
        run of the suite that runs whole layers runs them here; what differs between them is in the
        arguments and in ``strategy`` (:class:`LayerStrategy`: what a run keeps, and how the graph's runs
        read each head's own input).

        ``x`` ``[rows, pos, d_model]`` holds positions ``start`` onwards, entering ``layer`` (or, with
        ``from_mlp``, entering its MLP). The positions before ``start`` are those of a run whose keys and
        values are ``prefix_k[layer]`` and ``prefix_v[layer]`` (``[layer, batch, >= start, kv_head, d_head]``,
        each batch repeated ``repeat`` times to make the rows): a causal model never changes them.

        Returns every position's final stream ``[rows, pos, d_model]``, or with ``final_pos`` each row's
        stream at its final position ``[rows, d_model]``, the last layer computing only that position. Rows
        whose final position is before ``start`` are the caller's to handle (they are garbage here).
        """
        keeps = strategy is not None
        run = strategy if strategy is not None else _MODEL_ITSELF
        rows = torch.arange(x.shape[0], device=x.device)
        within = None if final_pos is None else (final_pos - start).clamp(min=0)
        suffix_pos = torch.arange(start, start + x.shape[1], device=x.device)
        at_final = False
        for current in range(layer, self.n_layers):
            last = within is not None and current == self.n_layers - 1
            resid_pre = x
            attn_out = None  # stays None where the layer starts at its MLP
            if from_mlp and current == layer:
                mlp_in = x
            else:
                q, k, v = run.qkv(self, current, x, suffix_pos)
                keys, values = k, v
                if prefix_k is not None and prefix_v is not None:
                    before_k = prefix_k[current][:, :start].repeat(repeat, 1, 1, 1)
                    before_v = prefix_v[current][:, :start].repeat(repeat, 1, 1, 1)
                    keys, values = torch.cat([before_k, k], dim=1), torch.cat([before_v, v], dim=1)
                values = run.values(current, values)
                if last:  # only the final position's query matters now
                    assert within is not None and final_pos is not None
                    x, q = x[rows, within][:, None], q[rows, within][:, None]
                    pattern, z = self.attend(current, q, keys, values, final_pos[:, None])
                    at_final = True
                else:
                    pattern, z = self.attend(current, q, keys, values, suffix_pos)
                run.attention(current, values, pattern, z)
                attn_out = run.attn_out(self, current, z)
                if not keeps:  # nothing holds the pattern past the attention
                    del pattern
                if self.arch.parallel:  # the MLP reads the stream entering the layer
                    mlp_in = x
                else:
                    x = mlp_in = x + attn_out
            if last and not at_final:
                assert within is not None
                x, mlp_in, at_final = x[rows, within][:, None], mlp_in[rows, within][:, None], True
            hidden = self.mlp_hidden(current, run.mlp_read(current, mlp_in))
            run.hidden(current, hidden)
            mlp_out = self.mlp_out_from_hidden(current, hidden)
            # parallel blocks add both outputs in one expression: its gradients accumulate in one order
            x = x + attn_out + mlp_out if self.arch.parallel and attn_out is not None else x + mlp_out
            if keeps and attn_out is not None:
                run.layer(current, LayerActivations(resid_pre, mlp_in, attn_out, mlp_out, k, v, pattern, z))
        if within is None:
            return x
        return x[:, 0] if at_final else x[rows, within]

    def per_head_qkv(self) -> tuple[Float[Tensor, "3 layer head d_model d_head"], Float[Tensor, "3 layer head d_head"]]:
        """The query, key and value weights and biases of every query head (``W[kind, layer, head]``, kind 0 q,
        1 k, 2 v), a key/value head's repeated for each query head of its group: what lets each head read an
        input of its own (the graph of edges, :mod:`helpers.analyses.circuits.graph`)."""
        arch, w = self.arch, self.w
        n, kv, d_head = arch.n_heads, arch.n_kv_heads, arch.d_head
        kv_of = torch.arange(n, device=w.W_E.device) // arch.group_size

        def heads(part: Tensor, count: int) -> Tensor:  # [layer, d_model, count * d_head] -> [layer, count, d_model, d_head]
            return part.unflatten(-1, (count, d_head)).permute(0, 2, 1, 3)

        w_q, w_k, w_v = w.W_QKV.split([n * d_head, kv * d_head, kv * d_head], dim=-1)
        b_q, b_k, b_v = w.b_QKV.split([n * d_head, kv * d_head, kv * d_head], dim=-1)
        weights = torch.stack([heads(w_q, n), heads(w_k, kv)[:, kv_of], heads(w_v, kv)[:, kv_of]])
        biases = torch.stack([b_q.unflatten(-1, (n, d_head)), b_k.unflatten(-1, (kv, d_head))[:, kv_of],
                              b_v.unflatten(-1, (kv, d_head))[:, kv_of]])
        return weights, biases

    # -- rotary ----------------------------------------------------------------------------------------

    def rotate(self, x: Tensor, positions: Int[Tensor, " pos"]) -> Tensor:
        """Queries or keys ``[..., pos, head, d_head]`` at absolute ``positions``, rotated (as they are where
        positions are not rotary)."""
        if not self.arch.rotary_dim:
            return x
        cos, sin = self._rotary(positions, x.dtype)
        return self._rotate(x, cos, sin)

    def _rotary(self, positions: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """cos and sin ``[pos, rotary_dim]`` at ``positions``, from the model's own rotary module."""
        length = int(positions.max()) + 1
        if length not in self._rotary_cache:
            self._rotary_cache = {length: self._rotary_table(length, dtype)}
        cos, sin = self._rotary_cache[length]
        return cos[positions], sin[positions]

    def _rotary_table(self, length: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        device = self.w.W_E.device
        position_ids = torch.arange(length, device=device)[None]
        probe = torch.zeros(1, length, self.arch.d_head, dtype=dtype, device=device)
        assert self.arch.family is not None
        if self.arch.family.rotary == "pairs":  # GPT-J: a table of sines then cosines, per pair of dims
            module = self.model.original_model.transformer.rotary_emb
            sin, cos = module(probe, position_ids)
            sin, cos = sin[0].repeat_interleave(2, dim=-1), cos[0].repeat_interleave(2, dim=-1)
            return cos, sin
        cos, sin = self.model.rotary_emb.original_component(probe, position_ids)
        return cos[0], sin[0]

    def _rotate(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        """Rotate the first ``rotary_dim`` dimensions of each head (``[..., pos, head, d_head]``)."""
        dim = self.arch.rotary_dim
        rot, rest = x[..., :dim], x[..., dim:]
        cos, sin = cos[:, None, :], sin[:, None, :]  # [pos, 1, dim]: the same for every head
        assert self.arch.family is not None
        if self.arch.family.rotary == "pairs":
            turned = torch.stack((-rot[..., 1::2], rot[..., ::2]), dim=-1).flatten(-2)
        else:
            half = dim // 2
            turned = torch.cat((-rot[..., half:], rot[..., :half]), dim=-1)
        rotated = rot * cos + turned * sin
        return torch.cat([rotated, rest], dim=-1) if rest.shape[-1] else rotated
