"""Copy scores: which heads copy the token they attend to, and how strongly.

Context. A head moves information in two steps: its QK circuit decides where to attend, its OV circuit
decides what to write from there. A *copying* head writes, from a token, something that raises that
same token's logit. The IOI paper (Wang et al. 2022) found its name mover heads this way: put a name's
residual stream through the head's OV circuit and see whether the name comes out on top of the logits.
*Negative* copying heads (negative name movers, copy suppression) write the opposite: the token's logit
goes down.

The score, for every head at once. For each prompt and each word of interest (the placeholders' words
and any answer token in the prompt; see :class:`helpers.tasks.prompts.WordPosition`), take the residual stream
after the first layer (``blocks.0.hook_resid_post``: in GPT-2 the first MLP acts as part of the
embedding) at the word's position, apply the LayerNorm the head would see, the head's OV circuit
``W_V @ W_O``, the final LayerNorm and the unembedding. The copy score is the fraction of
these inputs whose own token is among the top ``k`` logits; the negative copy score does the same with
the OV output negated. A tie counts against the token (a head whose output is zero copies nothing).
The value bias (and the LayerNorm bias that reaches the values) is left out: the head writes it
whatever it attends to, so it says nothing about copying, and compatibility mode has already folded
it into the layer's output bias ``b_O``.

Attention decides whether the copying is used: :func:`compute_attention_vs_projection` plots, for one
head on the task's prompts, the attention from the final position to each word against how much the
head's output raises that word's logit. A name mover shows a strong positive correlation (the IOI
paper), a negative name mover a strong negative one.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from helpers.analyses.heads import HeadScore, top_of_sign
from helpers.models.architectures import describe
from helpers.models.devices import to_host
from helpers.models.hooks import cache_activations
from helpers.models.load import folded_norm, folded_unembed, post_norm_weights, stacked_weight
from helpers.tasks.metrics import pearson_correlation
from helpers.tasks.prompts import PromptSet

RESID_HOOK = "blocks.0.hook_resid_post"
# Logit rows (head x input) scored at once: bounds memory at about this many rows x d_vocab floats.
_ROWS_PER_CHUNK = 256


@dataclass(frozen=True)
class CopyInputs:
    """The words of interest of every prompt: one input per (prompt, position)."""

    prompt_index: Int[Tensor, " case"]
    position: Int[Tensor, " case"]
    token: Int[Tensor, " case"]
    roles: tuple[str, ...]
    str_tokens: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.roles)

    def label(self, case: int) -> str:
        return f"{self.roles[case]}: {self.str_tokens[case]!r} (prompt {int(self.prompt_index[case])})"


def copy_inputs(prompts: PromptSet) -> CopyInputs:
    """Every word position of every clean prompt, in prompt then position order."""
    rows = [(b, w) for b, words in enumerate(prompts.word_positions) for w in words]
    if not rows:
        raise ValueError("the prompts have no words of interest: no placeholder words, and neither answer token "
                         "appears in a prompt. Fix: copy scores need a task whose answers or placeholders occur "
                         "in its prompts.")
    return CopyInputs(
        prompt_index=torch.tensor([b for b, _ in rows], dtype=torch.long),
        position=torch.tensor([w.position for _, w in rows], dtype=torch.long),
        token=torch.tensor([w.token for _, w in rows], dtype=torch.long),
        roles=tuple(w.role for _, w in rows),
        str_tokens=tuple(prompts.clean_str_tokens[b][w.position] for b, w in rows),
    )


@dataclass(frozen=True)
class CopyScores:
    """Whether each input's own token is among each head's top ``k`` OV logits (ties count against it),
    for the head's output and for its negation."""

    in_top: Bool[Tensor, "layer head_index case"]
    negative_in_top: Bool[Tensor, "layer head_index case"]
    inputs: CopyInputs
    k: int

    @property
    def copy(self) -> Float[Tensor, "layer head_index"]:
        """Fraction of inputs whose token is in the head's top ``k``."""
        return self.in_top.float().mean(dim=-1)

    @property
    def negative(self) -> Float[Tensor, "layer head_index"]:
        """The same with the head's output negated."""
        return self.negative_in_top.float().mean(dim=-1)

    def scores(self, *, negative: bool = False) -> Float[Tensor, "layer head_index"]:
        return self.negative if negative else self.copy

    def by_role(self, *, negative: bool = False) -> dict[str, Float[Tensor, "layer head_index"]]:
        """The score over the inputs of each role (placeholder) alone."""
        in_top = self.negative_in_top if negative else self.in_top
        roles = dict.fromkeys(self.inputs.roles)
        return {role: in_top[..., [r == role for r in self.inputs.roles]].float().mean(dim=-1) for role in roles}

    def by_role_of(self, heads: Sequence[HeadScore], *, negative: bool = False) -> dict[str, dict[str, float]]:
        """``{head name: {role: score}}`` for ``heads``."""
        by_role = self.by_role(negative=negative)
        return {h.name: {role: float(values[h.layer, h.head]) for role, values in by_role.items()} for h in heads}

    def top(self, k: int, *, negative: bool = False) -> list[HeadScore]:
        """Up to ``k`` heads with a score above 0%, highest first."""
        return top_of_sign(self.scores(negative=negative), k, "positive")

    def to_dict(self, k: int = 10) -> dict[str, Any]:
        return {
            "k": self.k,
            "n_inputs": len(self.inputs),
            "roles": {role: self.inputs.roles.count(role) for role in dict.fromkeys(self.inputs.roles)},
            "copy": {"values": self.copy.tolist(), "top": [h.to_dict() for h in self.top(k)]},
            "negative": {"values": self.negative.tolist(),
                         "top": [h.to_dict() for h in self.top(k, negative=True)]},
        }


def compute_copy_scores(model: Any, prompts: PromptSet, *, k: int = 5) -> CopyScores:
    """Copy and negative copy scores of every head on the task's words of interest.

    Args:
        model: the model (compatibility mode).
        prompts: the task's prompts; their ``word_positions`` are the inputs.
        k: a token counts as copied when it is among the head's top ``k`` logits.

    Each layer's logits are :func:`ov_readout`'s two factors times the full unembedding.
    """
    d_vocab = model.cfg.d_vocab
    if not 1 <= k < d_vocab:
        raise ValueError(f"k={k}: a token is copied when it is among the top k logits. Fix: use 1 <= k < {d_vocab}.")
    inputs = copy_inputs(prompts)
    tokens = inputs.token.to(model.cfg.device)
    w_u, b_u = model.W_U.float(), stacked_weight(model, "b_U").float()
    n_heads, n_cases = model.cfg.n_heads, len(inputs)
    cases_per_chunk = max(1, _ROWS_PER_CHUNK // n_heads)
    in_top, negative_in_top = [], []
    for values, w_o in ov_readout(model, resid_after_first_layer(model, prompts, inputs)):
        ov_unembed = w_o @ w_u  # [head, d_head, d_vocab]
        layer_in_top, layer_negative = [], []
        for start in range(0, n_cases, cases_per_chunk):
            chunk = slice(start, start + cases_per_chunk)
            target = tokens[chunk].expand(n_heads, -1)[..., None]  # [head, case, 1]
            for sign, out in ((1.0, layer_in_top), (-1.0, layer_negative)):
                logits = torch.baddbmm(b_u, values[:, chunk], ov_unembed, alpha=sign)
                out.append(_in_top_k(logits, target, k))
        in_top.append(torch.cat(layer_in_top, dim=-1))
        negative_in_top.append(torch.cat(layer_negative, dim=-1))
    return CopyScores(to_host(torch.stack(in_top)), to_host(torch.stack(negative_in_top)), inputs, k)


def ov_readout(
    model: Any, resid: Float[Tensor, "case d_model"]
) -> Iterator[tuple[Float[Tensor, "head_index case d_head"], Float[Tensor, "head_index d_head d_model"]]]:
    """Per layer, what the final LayerNorm and unembedding read of each head's OV output from each input, in
    two factors: the values ``LN(resid) @ W_V``, divided by the final LayerNorm's scale of the output they
    make, and ``W_O`` (centred where that LayerNorm centres). ``values @ W_O @ W_U + b_U`` are the logits.

    The OV circuit has rank ``d_head``, so a caller multiplies ``W_O`` by the unembedding columns it needs
    once per layer (``[head, d_head, d_vocab]``), then each input's values by that: a ``d_head``-deep product
    per input instead of a ``d_model``-deep one per input and head.
    """
    x = folded_norm(resid, model.cfg)  # [case, d_model]
    w_v, w_o = ov_weights(model)
    if model.cfg.normalization_type in ("LN", "LNPre"):
        w_o = w_o - w_o.mean(dim=-1, keepdim=True)  # the final LayerNorm centres the output: centre W_O instead
    for layer in range(model.cfg.n_layers):
        values = torch.einsum("cm,hmd->hcd", x, w_v[layer])
        outputs = values @ w_o[layer]  # [head, case, d_model], already centred
        scale = (outputs.pow(2).mean(dim=-1, keepdim=True) + model.cfg.eps).sqrt()
        yield values / scale, w_o[layer]


def _in_top_k(
    logits: Float[Tensor, "*row d_vocab"], target: Int[Tensor, "*row 1"], k: int
) -> Bool[Tensor, "*row"]:
    """Is the target among the top ``k`` logits, ties counting against it? Exactly when the (k+1)-th
    largest logit is below the target's (fewer than ``k`` other tokens reach it)."""
    return logits.topk(k + 1, dim=-1).values[..., k] < logits.gather(-1, target)[..., 0]


def resid_after_first_layer(model: Any, prompts: PromptSet, inputs: CopyInputs) -> Float[Tensor, "case d_model"]:
    """The clean run's residual stream after layer 0 at each input's position."""
    _, acts = cache_activations(model, prompts.clean_tokens.to(model.cfg.device), [RESID_HOOK])
    resid = acts[RESID_HOOK].float()
    return resid[inputs.prompt_index.to(resid.device), inputs.position.to(resid.device)]


def ov_weights(model: Any) -> tuple[Float[Tensor, "layer head_index d_model d_head"],
                                      Float[Tensor, "layer head_index d_head d_model"]]:
    """Every query head's ``W_V`` (with grouped-query attention, its key/value head's) and ``W_O`` (times
    the post-norm's weight where the model has one: the direction the head writes in)."""
    arch = describe(model)
    w_v, w_o = model.W_V.float(), model.W_O.float()
    if arch.grouped_query:
        w_v = w_v.repeat_interleave(arch.group_size, dim=1)
    if arch.post_norms:
        w_o = w_o * post_norm_weights(model)[:, None, None, :].to(w_o.device)
    return w_v, w_o


def ov_outputs(
    model: Any, resid: Float[Tensor, "case d_model"], heads: Sequence[HeadScore]
) -> Float[Tensor, "head case d_model"]:
    """What each of ``heads``'s OV circuits writes from each input: ``LN(resid) @ W_V @ W_O``.

    In compatibility mode the LayerNorm's weight is folded into ``W_V``, so the LayerNorm left to apply
    is the same for every layer; the value bias is not added (see the module's docstring).
    """
    x = folded_norm(resid, model.cfg)
    layers = torch.tensor([h.layer for h in heads])
    indices = torch.tensor([h.head for h in heads])
    w_v, w_o = ov_weights(model)
    values = torch.einsum("cm,hmd->hcd", x, w_v[layers, indices])
    return torch.einsum("hcd,hdm->hcm", values, w_o[layers, indices])


def ov_logits(model: Any, outputs: Float[Tensor, "row d_model"]) -> Float[Tensor, "row d_vocab"]:
    """Head outputs read by the final LayerNorm (on the output alone) and the unembedding."""
    return folded_unembed(outputs, model)


# ---------------------------------------------------------------------------------------------------
# Successor scores: heads whose OV circuit maps a word of the task's list to the next one
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SuccessorPairs:
    """The (word, next word) pairs of the task's ordered lists, as the tokens the model predicts."""

    list_name: tuple[str, ...]  # per pair
    words: tuple[tuple[str, str], ...]
    token: Int[Tensor, " pair"]  # the word's token
    candidates: Int[Tensor, " candidate"]  # every word of every list, once
    successor: Int[Tensor, " pair"]  # the next word, as an index into candidates
    same_list: Bool[Tensor, "pair candidate"]  # which candidates are words of the pair's own list
    not_single_tokens: tuple[str, ...]  # words left out: more than one token

    def __len__(self) -> int:
        return len(self.words)


def successor_pairs(spec: Any, tokenizer: Any) -> SuccessorPairs | None:
    """Every word of each of the task's ordered lists (:attr:`helpers.tasks.spec.TaskSpec.sequence_lists`) with
    the next word of its list (the last with the first where the list is cyclic); None when the task has no
    ordered list or none of its words is a single token. A word is taken as the model predicts it (with its
    leading space where the task's answers have one); a word of more than one token is left out, and so are
    the pairs it is in."""
    lists = spec.sequence_lists
    if not lists:
        return None
    token_of: dict[str, int] = {}
    skipped: list[str] = []
    for name in lists:
        for word in spec.words_for(name):
            ids = tokenizer(spec.answer_text(word), add_special_tokens=False)["input_ids"]
            if len(ids) == 1:
                token_of[word] = int(ids[0])
            else:
                skipped.append(f"{name}: {word!r}")
    candidates = list(dict.fromkeys(token_of.values()))
    list_of, words, successor, members = [], [], [], []
    for name in lists:
        ordered = spec.words_for(name)
        following = list(zip(ordered, ordered[1:]))
        if name in spec.cyclic and len(ordered) > 2:
            following.append((ordered[-1], ordered[0]))
        own = {candidates.index(token_of[w]) for w in ordered if w in token_of}
        for word, after in following:
            if word in token_of and after in token_of and token_of[word] != token_of[after]:
                list_of.append(name)
                words.append((word, after))
                successor.append(candidates.index(token_of[after]))
                members.append([c in own for c in range(len(candidates))])
    if not words:
        return None
    return SuccessorPairs(tuple(list_of), tuple(words), torch.tensor([token_of[w] for w, _ in words]),
                          torch.tensor(candidates), torch.tensor(successor), torch.tensor(members), tuple(skipped))


@dataclass(frozen=True)
class SuccessorScores:
    """Whether each head's OV circuit, from each word of the task's ordered lists, puts the next word of the
    list ahead of every other word of that list (ties count against it)."""

    first: Bool[Tensor, "layer head_index pair"]
    pairs: SuccessorPairs

    @property
    def values(self) -> Float[Tensor, "layer head_index"]:
        """The successor score: the fraction of pairs whose next word comes first."""
        return self.first.float().mean(dim=-1)

    def top(self, k: int) -> list[HeadScore]:
        """Up to ``k`` heads with a score above 0, highest first."""
        return top_of_sign(self.values, k, "positive")

    def to_dict(self, k: int = 10) -> dict[str, Any]:
        return {"lists": {name: self.pairs.list_name.count(name) for name in dict.fromkeys(self.pairs.list_name)},
                "not_single_tokens": list(self.pairs.not_single_tokens),
                "values": self.values.tolist(), "top": [h.to_dict() for h in self.top(k)]}


def compute_successor_scores(model: Any, spec: Any) -> SuccessorScores | None:
    """The successor score of every head (Gould et al. 2023, "Successor heads") on the task's own ordered
    lists (months, days, numbers, letters); None when the task has none (see :func:`successor_pairs`).

    Each word is read as the copy score reads a word (the residual stream after layer 0, here at the word
    alone after BOS: its effective embedding), through each head's OV circuit, the final LayerNorm and the
    unembedding (:func:`ov_readout`), and the logits of the words of its list compared: the pair counts when
    the next word's logit is above every other word's of the list, the word itself included, so a head that
    copies scores 0.
    """
    pairs = successor_pairs(spec, model.tokenizer)
    if pairs is None:
        return None
    device = model.cfg.device
    bos = model.tokenizer.bos_token_id
    words = pairs.token[:, None]
    tokens = torch.cat([torch.full_like(words, bos), words], dim=1) if bos is not None else words
    _, acts = cache_activations(model, tokens.to(device), [RESID_HOOK])
    resid = acts[RESID_HOOK][:, -1].float()
    w_u = model.W_U.float()[:, pairs.candidates.to(device)]
    b_u = stacked_weight(model, "b_U").float()[pairs.candidates.to(device)]
    successor = pairs.successor.to(device)[None, :, None]  # [1, pair, 1]
    outside = ~pairs.same_list.to(device)
    first = []
    for values, w_o in ov_readout(model, resid):
        logits = torch.baddbmm(b_u, values, w_o @ w_u)  # [head, pair, candidate]
        logits = logits.masked_fill(outside, float("-inf"))
        target = logits.gather(-1, successor.expand(logits.shape[0], -1, -1))
        others = logits.scatter(-1, successor.expand(logits.shape[0], -1, -1), float("-inf"))
        first.append((others.amax(dim=-1, keepdim=True) < target)[..., 0])
    return SuccessorScores(to_host(torch.stack(first)), pairs)


# ---------------------------------------------------------------------------------------------------
# What a head copies
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CopyPredictions:
    """A head's top OV predictions for a few inputs: what it writes when it attends to each, and whether
    the input's own token is among them (by the copy score's rule: ties count against it)."""

    head: HeadScore
    negative: bool
    inputs: tuple[str, ...]
    input_tokens: tuple[str, ...]
    top_tokens: tuple[tuple[str, ...], ...]
    copied: tuple[bool, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"head": self.head.name, "negative": self.negative,
                "inputs": [{"input": i, "top_tokens": list(t), "copied": c}
                           for i, t, c in zip(self.inputs, self.top_tokens, self.copied)]}


def compute_copy_predictions(
    model: Any, prompts: PromptSet, heads: Sequence[HeadScore], *, negative: bool = False, n_inputs: int = 4,
    k: int = 5,
) -> list[CopyPredictions]:
    """Each head's top ``k`` tokens for the first ``n_inputs`` inputs with distinct tokens."""
    if not heads:
        return []
    inputs = copy_inputs(prompts)
    chosen, seen = [], set()
    for case in range(len(inputs)):
        if int(inputs.token[case]) not in seen:
            seen.add(int(inputs.token[case]))
            chosen.append(case)
        if len(chosen) == n_inputs:
            break
    picked = CopyInputs(inputs.prompt_index[chosen], inputs.position[chosen], inputs.token[chosen],
                        tuple(inputs.roles[c] for c in chosen), tuple(inputs.str_tokens[c] for c in chosen))
    outputs = ov_outputs(model, resid_after_first_layer(model, prompts, picked), heads)  # [head, case, d_model]
    sign = -1.0 if negative else 1.0
    logits = ov_logits(model, sign * outputs.flatten(0, 1)).unflatten(0, (len(heads), len(chosen)))
    top = logits.topk(k, dim=-1).indices
    copied = _in_top_k(logits, picked.token.to(logits.device).expand(len(heads), -1)[..., None], k)
    decode = model.tokenizer.decode
    return [
        CopyPredictions(
            head=h, negative=negative,
            inputs=tuple(picked.label(c) for c in range(len(chosen))),
            input_tokens=picked.str_tokens,
            top_tokens=tuple(tuple(decode([int(t)]) for t in top[i, c]) for c in range(len(chosen))),
            copied=tuple(bool(c) for c in copied[i]),
        )
        for i, h in enumerate(heads)
    ]


# ---------------------------------------------------------------------------------------------------
# Attention against output, per word (the IOI paper's name mover scatter)
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AttentionProjection:
    """For one head: per (prompt, word), attention from the final position to the word against the
    head's output there projected on the word's unembedding direction."""

    head: HeadScore
    attention: Float[Tensor, " point"]
    projection: Float[Tensor, " point"]
    roles: tuple[str, ...]
    words: tuple[str, ...]
    prompt_index: tuple[int, ...]
    pearson_r: float
    p_value: float

    def to_dict(self) -> dict[str, Any]:
        return {"head": self.head.name, "pearson_r": self.pearson_r, "p_value": self.p_value,
                "n_points": len(self.roles)}


def compute_attention_vs_projection(
    model: Any, prompts: PromptSet, heads: Sequence[HeadScore]
) -> list[AttentionProjection]:
    """Attention to each word of interest against the head's output projected on that word.

    A word that occurs several times (IOI's subject) is one point: its attention is the sum over its
    positions, since the head's output mixes what it read from all of them. The projection is the dot
    product of the head's output at the final position, ``z @ W_O``, with the word's column of ``W_U``.
    """
    if not heads:
        return []
    layers = sorted({h.layer for h in heads})
    names = [f"blocks.{layer}.attn.hook_{kind}" for layer in layers for kind in ("pattern", "z")]
    post_norms = describe(model).post_norms
    if post_norms:
        names += [f"blocks.{layer}.ln1_post.hook_scale" for layer in layers]
    _, acts = cache_activations(model, prompts.clean_tokens.to(model.cfg.device), names)
    w_o, w_u = model.W_O.float(), model.W_U.float()  # products with the weights are taken where they are
    device = w_u.device
    rows, final_pos = torch.arange(len(prompts), device=device), prompts.final_pos.to(device)
    post_weights = post_norm_weights(model).to(device) if post_norms else None

    # One point per (prompt, distinct word): its role, token, and the positions its attention sums over.
    point_prompt, point_role, point_token, point_word = [], [], [], []
    mask = torch.zeros(0, prompts.clean_tokens.shape[1])
    rows_of_mask = []
    for b, words in enumerate(prompts.word_positions):
        for token in dict.fromkeys(w.token for w in words):
            at = [w for w in words if w.token == token]
            point_prompt.append(b)
            point_role.append(at[0].role)
            point_token.append(token)
            point_word.append(prompts.clean_str_tokens[b][at[0].position])
            row = torch.zeros(prompts.clean_tokens.shape[1])
            row[[w.position for w in at]] = 1.0
            rows_of_mask.append(row)
    mask = (torch.stack(rows_of_mask) if rows_of_mask else mask).to(device)
    prompt_of = torch.tensor(point_prompt, dtype=torch.long, device=device)
    token_of = torch.tensor(point_token, dtype=torch.long, device=device)

    attentions, projections = [], []
    for h in heads:
        pattern = acts[f"blocks.{h.layer}.attn.hook_pattern"].float().to(device)[rows, h.head, final_pos]  # [batch, key]
        z = acts[f"blocks.{h.layer}.attn.hook_z"].float().to(device)[rows, final_pos, h.head]  # [batch, d_head]
        head_out = z @ w_o[h.layer, h.head]  # [batch, d_model]
        if post_weights is not None:  # through the post-norm, with this position's scale
            scale = acts[f"blocks.{h.layer}.ln1_post.hook_scale"].float().to(device)[rows, final_pos]
            head_out = head_out * post_weights[h.layer] / scale
        attentions.append((pattern[prompt_of] * mask).sum(dim=-1))
        projections.append((head_out[prompt_of] * w_u[:, token_of].T).sum(dim=-1))
    by_head = zip(heads, to_host(torch.stack(attentions)), to_host(torch.stack(projections)))  # once, at the end
    results = []
    for h, attention, projection in by_head:
        r, p_value = pearson_correlation(attention, projection)
        results.append(AttentionProjection(
            head=h, attention=attention, projection=projection, roles=tuple(point_role), words=tuple(point_word),
            prompt_index=tuple(point_prompt), pearson_r=r, p_value=p_value,
        ))
    return results
