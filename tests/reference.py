"""Independent computations the tests compare the suite's analyses with.

None of this uses ``helpers``' own analysis code: patching comes from ``transformer_lens.patching`` on
the model's hooks, attributions from a plain transformers forward pass of the saved model (its
LayerNorms unfolded, read through ``register_forward_pre_hook``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from transformer_lens import patching as tlp

from helpers.tasks.metrics import at_final_pos
from helpers.tasks.prompts import PromptSet

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


# ---------------------------------------------------------------------------------------------------
# Edges, through the model's hooks: the IOI paper's path patching and EAP's gradients
# ---------------------------------------------------------------------------------------------------


def _node(name: str) -> tuple[str, int, int]:
    """'input' -> ('input', 0, 0); 'L1H2' -> ('head', 1, 2); 'MLP0' -> ('mlp', 0, 0)."""
    if name == "input":
        return "input", 0, 0
    if name.startswith("MLP"):
        return "mlp", int(name[3:]), 0
    layer, head = name[1:].split("H")
    return "head", int(layer), int(head)


def _metric_of(prompts: PromptSet, logits: Tensor) -> Tensor:
    return prompts.metric(at_final_pos(logits, prompts.final_pos)).float()


def hook_path_patching(model: Any, prompts: PromptSet, sender: str, receiver: str) -> float:
    """The IOI paper's path patching (Wang et al. 2022, appendix B), step by step through the model's
    hooks, with TransformerLens's per-head query/key/value inputs.

    1. Cache every head's ``z`` and every MLP's output on the clean and the corrupted prompts.
    2. Run the clean prompts with every head's ``z`` and every MLP's output frozen to their clean values,
       except the sender's, set to its corrupted value (the input: the corrupted embeddings); record what
       the receiver reads (its ``hook_{q,k,v}_input`` slice, what the MLP's norm reads, or the logits).
    3. Run the clean prompts again with only the receiver's input replaced by that record.

    Returns the effect ``(clean - patched) / (clean - corrupted)`` of the task metric's mean. Heads are
    indexed as the hooks lay them out (key/value heads for grouped-query attention).
    """
    n_layers = model.cfg.n_layers
    names = [f"blocks.{layer}.attn.hook_z" for layer in range(n_layers)]
    names += [f"blocks.{layer}.hook_mlp_out" for layer in range(n_layers)] + ["blocks.0.hook_resid_pre"]
    model.set_use_split_qkv_input(True)
    model.set_use_hook_mlp_in(True)
    try:
        with torch.no_grad():
            clean_logits, clean = model.run_with_cache(prompts.clean_tokens, names_filter=names)
            corrupted_logits, corrupted = model.run_with_cache(prompts.corrupted_tokens, names_filter=names)
            kind, s_layer, s_head = _node(sender)

            def frozen(name: str) -> Any:
                def hook(act: Tensor, hook: Any) -> Tensor:
                    out = clean[name].clone()
                    if kind == "head" and name == f"blocks.{s_layer}.attn.hook_z":
                        out[:, :, s_head] = corrupted[name][:, :, s_head]
                    if kind == "mlp" and name == f"blocks.{s_layer}.hook_mlp_out":
                        out = corrupted[name].clone()
                    return out
                return hook

            hooks = [(name, frozen(name)) for name in names[:-1]]
            if kind == "input":
                hooks.append(("blocks.0.hook_resid_pre", lambda act, hook: corrupted["blocks.0.hook_resid_pre"].clone()))
            if receiver == "logits":
                patched_logits = model.run_with_hooks(prompts.clean_tokens, fwd_hooks=hooks)
            else:
                r_kind, r_layer, r_head = _node(receiver.split("<")[0])
                read = (f"blocks.{r_layer}.hook_{receiver[-2]}_input" if r_kind == "head"
                        else f"blocks.{r_layer}.ln2.hook_in")  # the MLP's own read of the stream
                record: dict[str, Tensor] = {}

                def keep(act: Tensor, hook: Any) -> Tensor:
                    record["read"] = act.clone()
                    return act

                model.run_with_hooks(prompts.clean_tokens, fwd_hooks=[*hooks, (read, keep)])

                def replace(act: Tensor, hook: Any) -> Tensor:
                    act = act.clone()
                    if r_kind == "head":
                        act[:, :, r_head] = record["read"][:, :, r_head]
                    else:
                        act = record["read"]
                    return act

                patched_logits = model.run_with_hooks(prompts.clean_tokens, fwd_hooks=[(read, replace)])
    finally:
        model.set_use_split_qkv_input(False)
        model.set_use_hook_mlp_in(False)
    clean_value = float(_metric_of(prompts, clean_logits).mean())
    corrupted_value = float(_metric_of(prompts, corrupted_logits).mean())
    return (clean_value - float(_metric_of(prompts, patched_logits).mean())) / (clean_value - corrupted_value)


def hook_circuit_metric(model: Any, prompts: PromptSet, dropped: set[str], *, zero: bool = False) -> Tensor:
    """The task metric per prompt of the clean run in which each edge in ``dropped`` (names such as
    ``"L0H1->L1H2<k>"``) carries the sender's corrupted-run output (or, with ``zero``, nothing) instead
    of its output in this run, through the model's hooks: as the run proceeds, every sender's output is
    recorded (``blocks.0.hook_resid_pre``, ``hook_z @ W_O`` per head, ``hook_mlp_out``), and each reader's
    own copy of the stream (``hook_{q,k,v}_input`` per head, the MLP norm's and the final norm's input)
    has ``output - ablated output`` of its dropped senders subtracted. Heads are indexed as the hooks lay
    them out (key/value heads for grouped-query attention)."""
    n_layers = model.cfg.n_layers
    w_o = model.W_O.detach()
    with torch.no_grad():
        _, corrupted = model.run_with_cache(prompts.corrupted_tokens, names_filter=lambda n: n.endswith(
            ("hook_z", "hook_mlp_out")) or n == "blocks.0.hook_resid_pre")

    def ablated(sender: str) -> Tensor:
        kind, layer, head = _node(sender)
        if zero:
            return torch.zeros(())
        if kind == "input":
            return corrupted["blocks.0.hook_resid_pre"]
        if kind == "mlp":
            return corrupted[f"blocks.{layer}.hook_mlp_out"]
        return corrupted[f"blocks.{layer}.attn.hook_z"][:, :, head] @ w_o[layer, head]

    by_reader: dict[str, list[tuple[str, int | None]]] = {}
    for edge in dropped:
        sender, receiver = edge.split("->")
        if receiver == "logits":
            by_reader.setdefault("ln_final.hook_in", []).append((sender, None))
        elif receiver.startswith("MLP"):
            by_reader.setdefault(f"blocks.{receiver[3:]}.ln2.hook_in", []).append((sender, None))
        else:
            _, layer, head = _node(receiver.split("<")[0])
            by_reader.setdefault(f"blocks.{layer}.hook_{receiver[-2]}_input", []).append((sender, head))
    now: dict[str, Tensor] = {}

    def record_input(act: Tensor, hook: Any) -> Tensor:
        now["input"] = act.clone()
        return act

    def record_z(layer: int) -> Any:
        def hook(act: Tensor, hook: Any) -> Tensor:
            for head in range(act.shape[2]):
                now[f"L{layer}H{head}"] = act[:, :, head] @ w_o[layer, head]
            return act
        return hook

    def record_mlp(layer: int) -> Any:
        def hook(act: Tensor, hook: Any) -> Tensor:
            now[f"MLP{layer}"] = act.clone()
            return act
        return hook

    def rebuild(name: str) -> Any:
        def hook(act: Tensor, hook: Any) -> Tensor:
            act = act.clone()
            for sender, head in by_reader[name]:
                change = now[sender] - ablated(sender)
                if head is None:
                    act = act - change
                else:
                    act[:, :, head] = act[:, :, head] - change
            return act
        return hook

    hooks = [("blocks.0.hook_resid_pre", record_input)]
    hooks += [(f"blocks.{layer}.attn.hook_z", record_z(layer)) for layer in range(n_layers)]
    hooks += [(f"blocks.{layer}.hook_mlp_out", record_mlp(layer)) for layer in range(n_layers)]
    hooks += [(name, rebuild(name)) for name in by_reader]
    model.set_use_split_qkv_input(True)
    try:
        with torch.no_grad():
            logits = model.run_with_hooks(prompts.clean_tokens, fwd_hooks=hooks)
    finally:
        model.set_use_split_qkv_input(False)
    return _metric_of(prompts, logits)


def hook_eap_scores(model: Any, prompts: PromptSet) -> dict[str, float]:
    """EAP's score of every edge, from gradients taken through the model's hooks: ``(clean - corrupted
    output of the sender) . d(normalised metric)/d(receiver's input)`` at the clean run, summed over
    positions. Outputs: ``blocks.0.hook_resid_pre`` (the input), ``hook_z @ W_O`` per head,
    ``hook_mlp_out``. Inputs: ``hook_{q,k,v}_input`` per head, what the MLP's norm reads
    (``ln2.hook_in``) and what the final norm reads (``ln_final.hook_in``), each cloned so that its
    gradient is its reader's alone. Keyed by edge name (``"L0H1->L1H2<k>"``; for grouped keys and values,
    ``L1H0<k>`` is key/value head 0's input)."""
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    z_names = [f"blocks.{layer}.attn.hook_z" for layer in range(n_layers)]
    mlp_names = [f"blocks.{layer}.hook_mlp_out" for layer in range(n_layers)]
    names = ["blocks.0.hook_resid_pre", *z_names, *mlp_names]
    w_o = model.W_O.detach()  # [layer, head, d_head, d_model]
    parallel = bool(getattr(model.cfg, "parallel_attn_mlp", False))

    def outputs(tokens: Tensor) -> dict[str, Tensor]:
        with torch.no_grad():
            _, cache = model.run_with_cache(tokens, names_filter=names)
        out = {"input": cache["blocks.0.hook_resid_pre"]}
        for layer in range(n_layers):
            for head in range(n_heads):
                out[f"L{layer}H{head}"] = cache[z_names[layer]][:, :, head] @ w_o[layer, head]
            out[f"MLP{layer}"] = cache[mlp_names[layer]]
        return out

    clean_out, corrupted_out = outputs(prompts.clean_tokens), outputs(prompts.corrupted_tokens)
    with torch.no_grad():
        clean_value = float(_metric_of(prompts, model(prompts.clean_tokens)).mean())
        corrupted_value = float(_metric_of(prompts, model(prompts.corrupted_tokens)).mean())
    reads = [f"blocks.{layer}.hook_{kind}_input" for layer in range(n_layers) for kind in "qkv"]
    reads += [f"blocks.{layer}.ln2.hook_in" for layer in range(n_layers)] + ["ln_final.hook_in"]
    kept: dict[str, Tensor] = {}

    def start(act: Tensor, hook: Any) -> Tensor:
        return act.detach().requires_grad_(True)

    def keeper(name: str) -> Any:  # keyed by the name asked for (the bridge may report an alias's)
        def keep(act: Tensor, hook: Any) -> Tensor:
            act = act.clone()  # a tensor of the reader's own: its gradient is that reader's alone
            act.retain_grad()
            kept[name] = act
            return act
        return keep

    model.set_use_split_qkv_input(True)
    model.set_use_hook_mlp_in(True)
    try:
        logits = model.run_with_hooks(prompts.clean_tokens, fwd_hooks=[("blocks.0.hook_resid_pre", start),
                                                                       *[(name, keeper(name)) for name in reads]])
        ((_metric_of(prompts, logits).mean() - corrupted_value) / (clean_value - corrupted_value)).backward()
    finally:
        model.set_use_split_qkv_input(False)
        model.set_use_hook_mlp_in(False)

    def score(sender: str, gradient: Tensor) -> float:
        return float(((clean_out[sender] - corrupted_out[sender]) * gradient).sum())

    senders = ["input"]
    scores = {}
    for layer in range(n_layers):
        for kind in "qkv":
            grad = kept[f"blocks.{layer}.hook_{kind}_input"].grad
            for head in range(grad.shape[2]):  # key/value heads for a grouped key or value input
                for sender in senders:
                    scores[f"{sender}->L{layer}H{head}<{kind}>"] = score(sender, grad[:, :, head])
        heads = [f"L{layer}H{head}" for head in range(n_heads)]
        mlp_senders = senders if parallel else senders + heads
        for sender in mlp_senders:
            scores[f"{sender}->MLP{layer}"] = score(sender, kept[f"blocks.{layer}.ln2.hook_in"].grad)
        senders = senders + heads + [f"MLP{layer}"]
    final = kept["ln_final.hook_in"].grad
    for sender in senders:
        scores[f"{sender}->logits"] = score(sender, final)
    return scores


# ---------------------------------------------------------------------------------------------------
# Plain transformers, any architecture of the toy models
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HFLayout:
    """Where plain transformers keeps the pieces of one architecture."""

    blocks: str
    norm_before_attention: str
    output_projection: str  # its input is every head's z, side by side
    final_norm: str
    values: Callable[[Any, Tensor], Tensor]  # (block, normed stream [d_model]) -> value of each key/value head
    post_attention_norm: str | None = None  # Gemma 2's norm on the attention output


HF_LAYOUTS = {
    "gpt2": HFLayout("transformer.h", "ln_1", "attn.c_proj", "transformer.ln_f",
                     lambda block, x: block.attn.c_attn(x)[2 * x.shape[-1] :]),
    "gpt_neo": HFLayout("transformer.h", "ln_1", "attn.attention.out_proj", "transformer.ln_f",
                        lambda block, x: block.attn.attention.v_proj(x)),
    "gpt_neox": HFLayout("gpt_neox.layers", "input_layernorm", "attention.dense", "gpt_neox.final_layer_norm",
                         lambda block, x: block.attention.query_key_value(x).view(block.attention.config.num_attention_heads,
                                                                                   3, -1)[:, 2].flatten()),
    "gptj": HFLayout("transformer.h", "ln_1", "attn.out_proj", "transformer.ln_f", lambda block, x: block.attn.v_proj(x)),
    "opt": HFLayout("model.decoder.layers", "self_attn_layer_norm", "self_attn.out_proj", "model.decoder.final_layer_norm",
                    lambda block, x: block.self_attn.v_proj(x)),
    **{name: HFLayout("model.layers", "input_layernorm", "self_attn.o_proj", "model.norm",
                      lambda block, x: block.self_attn.v_proj(x),
                      "post_attention_layernorm" if name == "gemma2" else None)
       for name in ("llama", "mistral", "qwen2", "gemma", "gemma2")},
}


def _module(root: Any, path: str) -> Any:
    for part in path.split("."):
        root = getattr(root, part)
    return root


def _norm_weight(norm: Any, model_type: str) -> Tensor:
    weight = norm.weight
    return 1.0 + weight if model_type in ("gemma", "gemma2") else weight


def hf_head_dla(hf: Any, prompts: PromptSet) -> tuple[Tensor, Tensor]:
    """Each head's direct logit attribution ``[layer, head, batch]`` and the logit difference before any
    final soft cap ``[batch]``, in plain transformers (any toy architecture).

    A head's output is the output projection of its own slice of z (the others zeroed), less the
    projection's bias; its value bias (what the pre-norm's bias and the value projection's bias add to
    every value, the same whatever it attends to) is taken out of z, as compatibility mode moves it into
    the layer's bias. Gemma 2's post-attention norm divides by its input's scale and multiplies by its
    weight; the final norm likewise, with the stream's own scale.
    """
    model_type = hf.config.model_type
    layout = HF_LAYOUTS[model_type]
    blocks = _module(hf, layout.blocks)
    n_heads = hf.config.num_attention_heads
    n_kv = getattr(hf.config, "num_key_value_heads", None) or n_heads
    rows, final = torch.arange(len(prompts)), prompts.final_pos
    captured: dict[str, Tensor] = {}

    def keep(name: str) -> Callable[..., None]:
        return lambda _module, args: captured.__setitem__(name, args[0].detach())

    handles = [_module(hf, layout.final_norm).register_forward_pre_hook(keep("final"))]
    handles.append(hf.get_output_embeddings().register_forward_hook(
        lambda _module, args, out: captured.__setitem__("logits", out.detach())))
    for layer, block in enumerate(blocks):
        handles.append(_module(block, layout.output_projection).register_forward_pre_hook(keep(f"z{layer}")))
        if layout.post_attention_norm:
            handles.append(_module(block, layout.post_attention_norm).register_forward_pre_hook(keep(f"post{layer}")))
    with torch.no_grad():
        hf(prompts.clean_tokens)
        for handle in handles:
            handle.remove()
        logits = at_final_pos(captured["logits"], final)
        answers = prompts.answer_tokens
        logit_diff = logits[rows, answers[:, 0]] - logits[rows, answers[:, 1]]
        final_norm = _module(hf, layout.final_norm)
        w_u = hf.get_output_embeddings().weight
        direction = (w_u[answers[:, 0]] - w_u[answers[:, 1]]) * _norm_weight(final_norm, model_type)
        resid = at_final_pos(captured["final"], final)
        expected = torch.zeros(len(blocks), n_heads, len(prompts))
        for layer, block in enumerate(blocks):
            pre_norm = _module(block, layout.norm_before_attention)
            constant = torch.zeros(hf.config.hidden_size) if getattr(pre_norm, "bias", None) is None else pre_norm.bias
            value_bias = layout.values(block, constant).view(n_kv, -1).repeat_interleave(n_heads // n_kv, dim=0)
            z = at_final_pos(captured[f"z{layer}"], final).view(len(prompts), n_heads, -1) - value_bias
            projection = _module(block, layout.output_projection)
            no_input = projection(torch.zeros(n_heads * z.shape[-1]))
            for head in range(n_heads):
                alone = torch.zeros_like(z)
                alone[:, head] = z[:, head]
                head_out = projection(alone.flatten(1)) - no_input
                if layout.post_attention_norm:
                    norm = _module(block, layout.post_attention_norm)
                    attn = at_final_pos(captured[f"post{layer}"], final)
                    scale = (attn.pow(2).mean(-1, keepdim=True) + norm.eps).sqrt()
                    head_out = head_out / scale * _norm_weight(norm, model_type)
                expected[layer, head] = (_normalise_by(head_out, resid, final_norm) * direction).sum(-1)
    return expected, logit_diff


def _normalise_by(part: Tensor, whole: Tensor, norm: Any) -> Tensor:
    """``part`` of the stream ``whole`` through ``norm`` with ``whole``'s scale (centred, for LayerNorm)."""
    eps = getattr(norm, "eps", None) or getattr(norm, "variance_epsilon", 1e-6)
    if isinstance(norm, torch.nn.LayerNorm):
        return (part - part.mean(-1, keepdim=True)) / (whole.var(-1, unbiased=False, keepdim=True) + eps).sqrt()
    return part / (whole.pow(2).mean(-1, keepdim=True) + eps).sqrt()


def hf_mean_ablated_metric(hf: Any, prompts: PromptSet, reference_tokens: Tensor, reference_final: Tensor,
                           reference_templates: tuple[int, ...], keep: Tensor,
                           metric: Callable[[Tensor], Tensor]) -> float:
    """The metric of plain transformers with head outputs mean-ablated where ``keep`` (``[batch, pos,
    layer, head]``) is False: each head's slice of the output projection's input (its z, value bias
    included) replaced by its mean over the reference prompts of the same template at the same position."""
    layout = HF_LAYOUTS[hf.config.model_type]
    blocks = _module(hf, layout.blocks)
    n_heads = hf.config.num_attention_heads
    captured: dict[int, Tensor] = {}
    handles = [_module(block, layout.output_projection).register_forward_pre_hook(
        lambda _m, args, layer=layer: captured.__setitem__(layer, args[0].detach().clone()))
        for layer, block in enumerate(blocks)]
    with torch.no_grad():
        hf(reference_tokens)
    for handle in handles:
        handle.remove()
    batch, width = prompts.clean_tokens.shape
    d_head = captured[0].shape[-1] // n_heads
    means = {layer: torch.zeros(batch, width, n_heads * d_head) for layer in captured}
    for b in range(batch):
        rows = [i for i, t in enumerate(reference_templates) if t == prompts.template_index[b]]
        for position in range(int(prompts.final_pos[b]) + 1):
            reaching = [i for i in rows if int(reference_final[i]) >= position]
            for layer, z in captured.items():
                means[layer][b, position] = torch.stack([z[i, position] for i in reaching]).mean(dim=0)

    def ablate(args: tuple[Tensor, ...], layer: int) -> tuple[Tensor, ...]:
        z = args[0].clone()
        for b in range(batch):
            for position in range(width):
                for head in range(n_heads):
                    if not keep[b, position, layer, head]:
                        part = slice(head * d_head, (head + 1) * d_head)
                        z[b, position, part] = means[layer][b, position, part]
        return (z,)

    handles = [_module(block, layout.output_projection).register_forward_pre_hook(
        lambda _m, args, layer=layer: ablate(args, layer)) for layer, block in enumerate(blocks)]
    with torch.no_grad():
        logits = hf(prompts.clean_tokens).logits
    for handle in handles:
        handle.remove()
    return float(metric(at_final_pos(logits, prompts.final_pos)))
