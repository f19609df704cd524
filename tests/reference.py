"""Independent computations the tests compare the suite's analyses with.

None of this uses ``helpers``' own analysis code: patching comes from ``transformer_lens.patching`` on
the model's hooks, attributions from a plain transformers forward pass of the saved model (its
LayerNorms unfolded, read through ``register_forward_pre_hook``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from transformer_lens import patching as tlp

from helpers.metrics import at_final_pos
from helpers.tasks import PromptSet

TL_FUNCTIONS = {
    "resid_pre": tlp.get_act_patch_resid_pre,
    "attn_out": tlp.get_act_patch_attn_out,
    "mlp_out": tlp.get_act_patch_mlp_out,
    "head_out": tlp.get_act_patch_attn_head_out_all_pos,
    "head_v": tlp.get_act_patch_attn_head_v_all_pos,
    "head_pattern": tlp.get_act_patch_attn_head_pattern_all_pos,
}


def transformer_lens_patch(model: Any, prompts: PromptSet, kind: str,
                           metric: Callable[[Tensor], Tensor]) -> Tensor:
    """``transformer_lens.patching`` on the same model, prompts and metric (of the final logits)."""
    _, clean_cache = model.run_with_cache(prompts.clean_tokens)
    return TL_FUNCTIONS[kind](model, prompts.corrupted_tokens, clean_cache,
                              lambda logits: metric(at_final_pos(logits, prompts.final_pos))).float().cpu()


def normalised_task_metric(model: Any, prompts: PromptSet) -> Callable[[Tensor], Tensor]:
    """The task's metric normalised to 0 on the corrupted and 1 on the clean run, from the model's own
    logits (what the engine's default metric must be)."""
    metric = prompts.metric
    with torch.no_grad():
        clean = float(metric(at_final_pos(model(prompts.clean_tokens), prompts.final_pos)).mean())
        corrupted = float(metric(at_final_pos(model(prompts.corrupted_tokens), prompts.final_pos)).mean())
    return lambda final_logits: (metric(final_logits).mean() - corrupted) / (clean - corrupted)


def gpt2_head_dla(hf: Any, prompts: PromptSet) -> Tensor:
    """Each head's direct logit attribution ``[layer, head, batch]`` in plain transformers GPT-2.

    Each head's output from transformers' own tensors (the input to ``c_proj``), through the unfolded
    final LayerNorm with the stream's own scale. As in HookedTransformer, a head's value bias is not part
    of its output: attention weights sum to one, so it adds the same vector whatever the input (the
    layer's bias holds it). The effective value bias includes what the first LayerNorm's bias adds
    through ``W_V``; it is taken out of ``z`` likewise.
    """
    n_heads = hf.config.n_head
    d_model = hf.config.n_embd
    d_head = d_model // n_heads
    rows = torch.arange(len(prompts))
    ln = hf.transformer.ln_f
    w_u = hf.lm_head.weight
    answers = prompts.answer_tokens
    direction = w_u[answers[:, 0]] - w_u[answers[:, 1]]
    captured: dict[str, Tensor] = {}
    handles = [ln.register_forward_pre_hook(lambda _m, args: captured.__setitem__("resid", args[0].detach()))]
    handles += [block.attn.c_proj.register_forward_pre_hook(
        lambda _m, args, layer=layer: captured.__setitem__(f"z{layer}", args[0].detach()))
        for layer, block in enumerate(hf.transformer.h)]
    with torch.no_grad():
        hf(prompts.clean_tokens)
    for handle in handles:
        handle.remove()
    resid = captured["resid"][rows, prompts.final_pos]  # the stream entering the final LayerNorm
    std = (resid.var(-1, unbiased=False, keepdim=True) + ln.eps).sqrt()
    expected = torch.zeros(len(hf.transformer.h), n_heads, len(prompts))
    for layer, block in enumerate(hf.transformer.h):
        z = captured[f"z{layer}"][rows, prompts.final_pos]  # [batch, n_heads * d_head]
        # c_attn is [query | key | value] along its output dimension
        w_v, b_v = block.attn.c_attn.weight[:, 2 * d_model :], block.attn.c_attn.bias[2 * d_model :]
        value_bias = block.ln_1.bias @ w_v + b_v
        w_proj = block.attn.c_proj.weight  # Conv1D: [n_heads * d_head, d_model]
        for head in range(n_heads):
            part = slice(head * d_head, (head + 1) * d_head)
            head_out = (z[:, part] - value_bias[part]) @ w_proj[part]
            centred = head_out - head_out.mean(-1, keepdim=True)
            expected[layer, head] = ((centred / std) * ln.weight * direction).sum(-1)
    return expected


def hook_neuron_patching(model: Any, prompts: PromptSet, layer: int, neurons: Tensor,
                         metric: Callable[[Tensor], Tensor]) -> Tensor:
    """Each of ``neurons`` (of ``layer``'s MLP, ``hook_post``) patched from the clean into the corrupted
    run at each prompt's final position, by a hook on the model: the corrupted prompts repeated once
    per neuron, copy ``i`` patching neuron ``i``. The metric of the final logits, per neuron."""
    batch = len(prompts)
    name = f"blocks.{layer}.mlp.hook_post"
    _, clean = model.run_with_cache(prompts.clean_tokens, names_filter=[name])
    final = prompts.final_pos
    rows = torch.arange(len(neurons) * batch)
    prompt_of, neuron_of = rows % batch, neurons.repeat_interleave(batch)

    def patch(act: Tensor, hook: Any) -> Tensor:
        act = act.clone()
        act[rows, final[prompt_of], neuron_of] = clean[name][prompt_of, final[prompt_of], neuron_of]
        return act

    with torch.no_grad():
        logits = model.run_with_hooks(prompts.corrupted_tokens.repeat(len(neurons), 1), fwd_hooks=[(name, patch)])
    finals = at_final_pos(logits, final.repeat(len(neurons))).view(len(neurons), batch, -1)
    return torch.stack([metric(f) for f in finals]).float().cpu()


def hook_update_vector_top_share(model: Any, prompts: PromptSet, *, component: str, layer: int,
                                 scale: float = 1.0) -> tuple[float, float, float]:
    """(norm of the update vector, share of corrupted prompts whose top token is a correct answer without
    it, the same with it): the component's mean output at the clean prompts' final positions
    (``hook_{component}_out``), added times ``scale`` at ``hook_resid_post`` of the same layer at the
    corrupted prompts' final positions, by hooks on the model."""
    rows = torch.arange(len(prompts))
    final = prompts.final_pos
    source = f"blocks.{layer}.hook_{component}_out"
    _, clean = model.run_with_cache(prompts.clean_tokens, names_filter=[source])
    vector = clean[source][rows, final].mean(dim=0)

    def add(resid: Tensor, hook: Any) -> Tensor:
        resid = resid.clone()
        resid[rows, final] += scale * vector
        return resid

    def top_share(logits: Tensor) -> float:
        top = at_final_pos(logits, final).argmax(dim=-1)
        correct = [set(prompts.metric.correct_tokens(i)) for i in range(len(prompts))]
        return sum(int(t) in c for t, c in zip(top.tolist(), correct)) / len(prompts)

    with torch.no_grad():
        before = model(prompts.corrupted_tokens)
        after = model.run_with_hooks(prompts.corrupted_tokens, fwd_hooks=[(f"blocks.{layer}.hook_resid_post", add)])
    return float(vector.norm()), top_share(before), top_share(after)
