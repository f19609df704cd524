"""Direct logit attribution (DLA): how much each component writes towards the correct answer.

The residual stream at the final position is a sum of component outputs: token and position
embeddings, then each layer's attention and MLP output (and each attention output is a sum over heads
plus a bias). The final LayerNorm centres that sum and divides it by one scale; the unembedding then
reads the logits. Dividing every component by the *same* cached scale makes the map from components to
logits linear, so each component's dot product with the logit-difference direction
``W_U[:, correct] - W_U[:, incorrect]`` is its direct contribution, and the contributions plus the
unembedding bias add up exactly to the model's logit difference. :class:`ComponentAttribution` carries
that check.

"Direct" means through the residual stream straight to the logits: a head whose output only changes
what later heads do has a small DLA however important it is. Activation patching measures that.

All analyses here read one clean forward pass, :func:`run_final_position_cache`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from helpers.analyses.heads import HeadScore, top_of_sign
from helpers.analyses.stats import Interval, bootstrap_mean, mean_interval
from helpers.models.architectures import describe
from helpers.models.devices import to_host
from helpers.models.hooks import cache_activations
from helpers.models.load import post_norm_weights, stacked_weight
from helpers.tasks.metrics import at_final_pos, set_probability, set_rank
from helpers.tasks.prompts import PromptSet


@dataclass(frozen=True)
class FinalPositionCache:
    """What one clean forward pass leaves at each prompt's final position."""

    final_logits: Float[Tensor, "batch d_vocab"]
    logit_diff: Float[Tensor, " batch"]  # linear in the stream: before any final soft cap
    embed: Float[Tensor, "batch d_model"]
    pos_embed: Float[Tensor, "batch d_model"] | None  # None: positions are rotary, nothing is added
    attn_out: Float[Tensor, "layer batch d_model"]
    mlp_out: Float[Tensor, "layer batch d_model"]
    z: Float[Tensor, "layer batch head_index d_head"]
    final_scale: Float[Tensor, "batch 1"]
    logit_diff_direction: Float[Tensor, "batch d_model"]
    logit_diff_bias: Float[Tensor, " batch"]
    ln_centres: bool
    ln_eps: float
    parallel: bool = False  # attention and MLP read the same stream (no stream between them)
    # Gemma 2: what each head's z @ W_O is multiplied by on its way into the stream (the post-norm's weight
    # over its scale at this position); None where a head's output joins the stream as it is.
    head_scale: Float[Tensor, "layer batch d_model"] | None = None
    capped_logit_diff: Float[Tensor, " batch"] | None = None  # after the final soft cap, where there is one

    @property
    def n_layers(self) -> int:
        return self.attn_out.shape[0]

    @property
    def input_components(self) -> list[tuple[str, Tensor]]:
        """What enters the residual stream before the first layer: the token embedding, and the
        position embedding where positions are learned."""
        found = [("embed", self.embed)]
        if self.pos_embed is not None:
            found.append(("pos_embed", self.pos_embed))
        return found


def run_final_position_cache(
    model: Any, prompts: PromptSet, *, fwd_hooks: Sequence[tuple[str, Callable[..., Any]]] = ()
) -> FinalPositionCache:
    """Run the clean prompts once and keep the final-position activations every DLA analysis needs.

    ``fwd_hooks`` edit the run (e.g. ablate a head); everything is then read from the edited run.
    """
    arch = describe(model)
    n_layers = model.cfg.n_layers
    names = ["hook_embed", "ln_final.hook_scale", "ln_final.hook_normalized"]
    if arch.learned_positions:
        names.append("hook_pos_embed")
    for layer in range(n_layers):
        names += [f"blocks.{layer}.hook_attn_out", f"blocks.{layer}.hook_mlp_out", f"blocks.{layer}.attn.hook_z"]
        if arch.post_norms:
            names.append(f"blocks.{layer}.ln1_post.hook_scale")
    tokens = prompts.clean_tokens.to(model.cfg.device)
    logits, acts = cache_activations(model, tokens, names, fwd_hooks=fwd_hooks, final_pos=prompts.final_pos)
    final = {name: at_final_pos(act, prompts.final_pos).float() for name, act in acts.items()}
    final_logits = logits.float()
    metric = prompts.metric.to(final_logits.device)
    direction = metric.direction(stacked_weight(model, "W_U").float())
    bias = metric.bias(stacked_weight(model, "b_U").float())
    logit_diff, capped = metric.logit_diff(final_logits), None
    if arch.final_softcap:  # the capped logits are not linear in the stream: explain the ones before the cap
        logit_diff, capped = (final["ln_final.hook_normalized"] * direction).sum(-1) + bias, logit_diff
    head_scale = None
    if arch.post_norms:
        weights = post_norm_weights(model)
        head_scale = torch.stack([weights[layer] / final[f"blocks.{layer}.ln1_post.hook_scale"] for layer in range(n_layers)])
    return FinalPositionCache(
        final_logits=to_host(final_logits),
        logit_diff=to_host(logit_diff),
        embed=to_host(final["hook_embed"]),
        pos_embed=to_host(final["hook_pos_embed"]) if arch.learned_positions else None,
        attn_out=to_host(torch.stack([final[f"blocks.{i}.hook_attn_out"] for i in range(n_layers)])),
        mlp_out=to_host(torch.stack([final[f"blocks.{i}.hook_mlp_out"] for i in range(n_layers)])),
        z=to_host(torch.stack([final[f"blocks.{i}.attn.hook_z"] for i in range(n_layers)])),
        final_scale=to_host(final["ln_final.hook_scale"]),
        logit_diff_direction=to_host(direction),
        logit_diff_bias=to_host(bias),
        # RMSNorm models (LLaMA-style) scale without centring; GPT-2's LayerNorm centres first.
        ln_centres=arch.normalization == "LN",
        ln_eps=arch.eps,
        parallel=arch.parallel,
        head_scale=None if head_scale is None else to_host(head_scale),
        capped_logit_diff=None if capped is None else to_host(capped),
    )


def project_on_logit_diff(
    stack: Float[Tensor, "*component batch d_model"], cache: FinalPositionCache
) -> Float[Tensor, "*component batch"]:
    """Apply the final LayerNorm with the cached final scale, then read the logit difference.

    The LayerNorm's weight and bias are folded into the unembedding (compatibility mode), so what
    remains is centring (for LayerNorm, not RMSNorm) and dividing by the scale.
    """
    if cache.ln_centres:
        stack = stack - stack.mean(dim=-1, keepdim=True)
    return ((stack / cache.final_scale) * cache.logit_diff_direction).sum(dim=-1)


# ---------------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LogitDiffResult:
    """Correct minus incorrect answer logit per prompt (mean over the answer sets, for tasks with sets),
    and the task's own metric when that is something else (a probability difference)."""

    per_prompt: Float[Tensor, " batch"]
    prompts: tuple[str, ...]
    correct_answers: tuple[str, ...]
    incorrect_answers: tuple[str, ...]
    metric_name: str = "logit difference"
    metric_per_prompt: Float[Tensor, " batch"] | None = None

    @property
    def metric_mean(self) -> float:
        """The task metric's mean (the logit difference's, for logit-difference tasks)."""
        values = self.per_prompt if self.metric_per_prompt is None else self.metric_per_prompt
        return float(values.mean())

    @property
    def mean(self) -> float:
        return float(self.per_prompt.mean())

    @property
    def accuracy(self) -> float:
        """Fraction of prompts where the correct answer beats the incorrect one."""
        return float((self.per_prompt > 0).float().mean())

    @property
    def ci95(self) -> Interval:
        """95% bootstrap interval of the mean logit difference over prompts (:mod:`helpers.analyses.stats`)."""
        return mean_interval(self.per_prompt)

    @property
    def description(self) -> str:
        text = (f"mean logit difference {self.mean:.3f} (95% interval {self.ci95}; correct preferred on "
                f"{self.accuracy:.0%} of prompts)")
        if self.metric_per_prompt is not None:
            text += f"; the task's metric, {self.metric_name}, {self.metric_mean:.3f}"
        return text

    def to_dict(self) -> dict[str, Any]:
        data = {"mean": self.mean, "ci95": self.ci95.to_list(), "accuracy": self.accuracy,
                "per_prompt": self.per_prompt.tolist(), "metric": self.metric_name, "metric_mean": self.metric_mean}
        if self.metric_per_prompt is not None:
            data["metric_per_prompt"] = self.metric_per_prompt.tolist()
        return data


@dataclass(frozen=True)
class ComponentAttribution:
    """Direct attribution per residual-stream component (plus the unembedding bias)."""

    labels: tuple[str, ...]
    per_prompt: Float[Tensor, "component batch"]
    logit_diff: Float[Tensor, " batch"]

    @property
    def mean(self) -> Float[Tensor, " component"]:
        return self.per_prompt.mean(dim=-1)

    @property
    def max_abs_error(self) -> float:
        """Largest gap, over prompts, between the summed attributions and the real logit difference."""
        return float((self.per_prompt.sum(dim=0) - self.logit_diff).abs().max())

    def to_dict(self) -> dict[str, Any]:
        return {
            "labels": list(self.labels),
            "mean": self.mean.tolist(),
            "sum_of_mean": float(self.mean.sum()),
            "max_abs_error": self.max_abs_error,
        }


@dataclass(frozen=True)
class LogitLensResult:
    """The logit difference read from the residual stream after each layer, normalised afresh."""

    labels: tuple[str, ...]
    per_prompt: Float[Tensor, "resid batch"]
    logit_diff: Float[Tensor, " batch"]

    @property
    def mean(self) -> Float[Tensor, " resid"]:
        return self.per_prompt.mean(dim=-1)

    @property
    def final_error(self) -> float:
        """Gap between the lens after the last layer and the model's logit difference (should be ~0)."""
        return float((self.per_prompt[-1] - self.logit_diff).abs().max())

    def to_dict(self) -> dict[str, Any]:
        return {"labels": list(self.labels), "mean": self.mean.tolist(), "final_error": self.final_error}


@dataclass(frozen=True)
class HeadAttribution:
    """Direct attribution of each attention head (its bias-free output) to the logit difference."""

    per_prompt: Float[Tensor, "layer head_index batch"]

    @property
    def mean(self) -> Float[Tensor, "layer head_index"]:
        return self.per_prompt.mean(dim=-1)

    def top(self, k: int) -> tuple[list[HeadScore], list[HeadScore]]:
        """Up to ``k`` heads of positive and up to ``k`` of negative mean attribution, strongest first."""
        return top_of_sign(self.mean, k, "positive"), top_of_sign(self.mean, k, "negative")

    def intervals(self, heads: Sequence[HeadScore]) -> dict[str, Interval]:
        """95% bootstrap interval over prompts of each of ``heads``' mean attribution, by head name."""
        if not heads:
            return {}
        rows = self.per_prompt[[h.layer for h in heads], [h.head for h in heads]]  # [head, batch]
        low, high = bootstrap_mean(rows)
        return {h.name: Interval(float(lo), float(hi)) for h, lo, hi in zip(heads, low, high)}

    def to_dict(self, k: int = 10) -> dict[str, Any]:
        positive, negative = self.top(k)
        intervals = self.intervals(positive + negative)
        return {
            "mean": self.mean.tolist(),
            "top_positive": [{**h.to_dict(), "ci95": intervals[h.name].to_list()} for h in positive],
            "top_negative": [{**h.to_dict(), "ci95": intervals[h.name].to_list()} for h in negative],
        }


# ---------------------------------------------------------------------------------------------------
# Analyses
# ---------------------------------------------------------------------------------------------------


def compute_logit_diff(cache: FinalPositionCache, prompts: PromptSet) -> LogitDiffResult:
    metric = prompts.metric
    if not metric.is_linear:
        name, task_values = metric.name, to_host(metric(cache.final_logits))
    elif cache.capped_logit_diff is not None:
        name, task_values = "logit difference after the final soft cap", cache.capped_logit_diff
    else:
        name, task_values = metric.name, None
    return LogitDiffResult(cache.logit_diff, prompts.clean_prompts, prompts.correct_answers, prompts.incorrect_answers,
                           name, task_values)


def compute_component_attribution(cache: FinalPositionCache) -> ComponentAttribution:
    """DLA of the embeddings (the position embedding only where positions are learned), each attention
    and MLP layer, and the unembedding bias."""
    labels = [name for name, _ in cache.input_components]
    stack = [value for _, value in cache.input_components]
    for layer in range(cache.n_layers):
        labels += [f"L{layer} attn", f"L{layer} mlp"]
        stack += [cache.attn_out[layer], cache.mlp_out[layer]]
    direct = project_on_logit_diff(torch.stack(stack), cache)
    per_prompt = torch.cat([direct, cache.logit_diff_bias[None]])
    return ComponentAttribution(tuple(labels) + ("unembed bias",), per_prompt, cache.logit_diff)


def compute_logit_lens(cache: FinalPositionCache) -> LogitLensResult:
    """Logit difference the model would give if it stopped after each layer.

    Each intermediate residual stream goes through the final LayerNorm with its *own* scale (what the
    model would do with it), so the last point is the model's real logit difference. Where attention and
    MLP run in parallel there is no stream between them: one point per layer.
    """
    resid = sum(value for _, value in cache.input_components)
    states, labels = [resid], ["embeddings"]
    for layer in range(cache.n_layers):
        if cache.parallel:
            resid = resid + cache.attn_out[layer] + cache.mlp_out[layer]
            states.append(resid)
            labels.append(f"L{layer}")
            continue
        resid = resid + cache.attn_out[layer]
        states.append(resid)
        labels.append(f"L{layer} attn")
        resid = resid + cache.mlp_out[layer]
        states.append(resid)
        labels.append(f"L{layer} mlp")
    stack = torch.stack(states)
    if cache.ln_centres:
        stack = stack - stack.mean(dim=-1, keepdim=True)
    scale = (stack.pow(2).mean(dim=-1, keepdim=True) + cache.ln_eps).sqrt()
    per_prompt = (stack / scale * cache.logit_diff_direction).sum(dim=-1) + cache.logit_diff_bias
    return LogitLensResult(tuple(labels), per_prompt, cache.logit_diff)


def head_outputs(model: Any, cache: FinalPositionCache) -> Float[Tensor, "layer head_index batch d_model"]:
    """What each head adds to the stream at the final position: ``z @ W_O`` (through the post-norm's
    scale at that position, where the model has one)."""
    w_o = model.W_O.float()  # the product is taken where the weights are; the outputs come back
    head_out = to_host(torch.einsum("lbhd,lhdm->lhbm", cache.z.to(w_o.device), w_o))
    return head_out if cache.head_scale is None else head_out * cache.head_scale[:, None]


def compute_head_attribution(model: Any, cache: FinalPositionCache) -> HeadAttribution:
    """DLA of every head: its output at the final position (:func:`head_outputs`), projected like the
    layers'."""
    return HeadAttribution(project_on_logit_diff(head_outputs(model, cache), cache))


def head_output_sum_error(model: Any, cache: FinalPositionCache) -> float:
    """How far the per-head outputs plus the attention bias are from each layer's attention output."""
    bias = to_host(stacked_weight(model, "b_O").float())[:, None]  # [layer, 1, d_model]: a bias, not a weight matrix
    if cache.head_scale is not None:
        bias = bias * cache.head_scale
    return float((head_outputs(model, cache).sum(dim=1) + bias - cache.attn_out).abs().max())


@dataclass(frozen=True)
class AttentionPatterns:
    """Attention patterns of some heads on one prompt."""

    heads: tuple[HeadScore, ...]
    str_tokens: tuple[str, ...]
    patterns: Float[Tensor, "head_index query_pos key_pos"]
    prompt: str

    @property
    def head_names(self) -> list[str]:
        return [h.name for h in self.heads]


def compute_attention_patterns(
    model: Any, prompts: PromptSet, heads: list[HeadScore], *, prompt_index: int = 0
) -> AttentionPatterns:
    """Attention patterns of ``heads`` on one clean prompt (without its padding)."""
    length = int(prompts.final_pos[prompt_index]) + 1
    tokens: Int[Tensor, "batch pos"] = prompts.clean_tokens[prompt_index : prompt_index + 1, :length]
    layers = sorted({h.layer for h in heads})
    _, acts = cache_activations(model, tokens.to(model.cfg.device), [f"blocks.{i}.attn.hook_pattern" for i in layers])
    patterns = to_host(torch.stack([acts[f"blocks.{h.layer}.attn.hook_pattern"][0, h.head] for h in heads]).float())
    return AttentionPatterns(tuple(heads), prompts.clean_str_tokens[prompt_index], patterns,
                             prompts.clean_prompts[prompt_index])


@dataclass(frozen=True)
class TopPredictions:
    """The model's most likely next tokens on one prompt, and where the two answers rank."""

    prompt: str
    tokens: tuple[str, ...]
    probs: tuple[float, ...]
    correct: str
    incorrect: str
    correct_rank: int
    incorrect_rank: int
    correct_prob: float
    incorrect_prob: float

    def to_dict(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "top_tokens": list(self.tokens), "top_probs": list(self.probs),
                "correct_rank": self.correct_rank, "incorrect_rank": self.incorrect_rank,
                "correct_prob": self.correct_prob, "incorrect_prob": self.incorrect_prob}


def compute_top_predictions(
    cache: FinalPositionCache, prompts: PromptSet, tokenizer: Any, *, prompt_index: int = 0, k: int = 10
) -> TopPredictions:
    """Top-``k`` next-token predictions on one clean prompt; ranks count from 1. For answer sets, a
    set's rank is its best token's and its probability their total."""
    logits = cache.final_logits[prompt_index : prompt_index + 1]
    top = torch.topk(logits[0].softmax(dim=-1), k)
    metric = prompts.metric.select([prompt_index])
    correct, incorrect = metric.signs > 0, metric.signs < 0

    return TopPredictions(
        prompt=prompts.clean_prompts[prompt_index],
        tokens=tuple(tokenizer.decode([int(i)]) for i in top.indices),
        probs=tuple(float(p) for p in top.values),
        correct=prompts.correct_answers[prompt_index],
        incorrect=prompts.incorrect_answers[prompt_index],
        correct_rank=int(set_rank(logits, metric.tokens, correct)[0]),
        incorrect_rank=int(set_rank(logits, metric.tokens, incorrect)[0]),
        correct_prob=float(set_probability(logits, metric.tokens, correct)[0]),
        incorrect_prob=float(set_probability(logits, metric.tokens, incorrect)[0]),
    )


@dataclass(frozen=True)
class AdditivityCheck:
    """Do the attributions add up to what the model actually does?"""

    component_sum_error: float
    logit_lens_final_error: float
    head_sum_error: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return max(self.component_sum_error, self.logit_lens_final_error, self.head_sum_error) <= self.tolerance

    def to_dict(self) -> dict[str, Any]:
        return {**vars(self), "ok": self.ok}

    def raise_if_failed(self) -> None:
        if not self.ok:
            raise AssertionError(f"direct logit attribution does not add up: {self.to_dict()}")


def check_additivity(
    model: Any, cache: FinalPositionCache, components: ComponentAttribution, lens: LogitLensResult
) -> AdditivityCheck:
    """Compare the summed attributions, the logit lens's last point and the per-head outputs with the
    model's own numbers. The tolerance scales with the logit difference and the model's dtype."""
    dtype_eps = torch.finfo(model.W_U.dtype).eps
    scale = max(1.0, float(cache.logit_diff.abs().max()))
    return AdditivityCheck(
        component_sum_error=components.max_abs_error,
        logit_lens_final_error=lens.final_error,
        head_sum_error=head_output_sum_error(model, cache),
        tolerance=max(1e-4, 200 * dtype_eps) * scale,
    )
