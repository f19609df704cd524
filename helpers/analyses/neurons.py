"""MLP neurons: which neurons of an MLP layer carry the task, and what they write.

Context. MLP-output patching says which MLP layers matter at which position. Inside a layer, each
neuron's activation (after the nonlinearity, ``hook_post``) times its row of ``W_out`` is what it
writes; patching one neuron's clean activation into the corrupted run at the final position measures
what that neuron alone carries. All ``d_mlp`` neurons are patched exactly, batched through
:class:`helpers.analyses.patching.engine.PatchingEngine`; attribution patching (one backward pass) estimates the same for
every neuron of every layer, as a cheap screen, and is shown against the exact values.

What a neuron writes is read through the unembedding (``W_out[neuron] @ W_U``): the tokens it promotes
and suppresses when it fires, and its direct effect on the logit difference per unit of activation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from helpers.analyses.patching.engine import PatchingEngine, PatchingResult
from helpers.models.architectures import describe
from helpers.models.devices import to_host
from helpers.models.hooks import cache_activations
from helpers.models.load import post_norm_weights
from helpers.tasks.metrics import at_final_pos, pearson_correlation
from helpers.tasks.prompts import PromptSet


def choose_mlp_layer(mlp_map: PatchingResult, final_position: int, corrupted_metric: float) -> int:
    """The MLP layer whose output patching moves the metric furthest from the corrupted run's value at
    the final position."""
    return int((mlp_map.values[:, final_position] - corrupted_metric).abs().argmax())


@dataclass(frozen=True)
class NeuronPatching:
    """Exact patching of every neuron of one layer (final position), and the attribution estimate of
    every neuron of every layer."""

    layer: int
    exact: Float[Tensor, " d_mlp"]
    estimate: Float[Tensor, "layer d_mlp"]
    corrupted_metric: float
    clean_metric: float
    metric_name: str

    @property
    def effect(self) -> Float[Tensor, " d_mlp"]:
        """How far each patch moves the metric from the corrupted run."""
        return self.exact - self.corrupted_metric

    @property
    def estimated_effect(self) -> Float[Tensor, " d_mlp"]:
        return self.estimate[self.layer] - self.corrupted_metric

    def top(self, k: int) -> list[int]:
        """The ``k`` neurons with the largest exact effects in magnitude, largest first (ties in index order)."""
        order = torch.sort(self.effect.abs(), descending=True, stable=True).indices
        return [int(n) for n in order[:k]]

    def warning(self, k: int) -> str | None:
        """Said when the top ``k`` is not a ranking: every effect is (nearly) zero, or the ``k``-th neuron ties
        with the next ones, so which of them is listed is index order, not effect."""
        magnitude = torch.sort(self.effect.abs(), descending=True).values
        scale = abs(self.clean_metric - self.corrupted_metric)
        floor = 1e-6 * max(scale, 1.0)
        if float(magnitude[0]) <= floor:
            return (f"no neuron of layer {self.layer} changes the metric (largest effect {float(magnitude[0]):.2g}): "
                    "the ranking below is index order. Choose another layer.")
        if len(magnitude) > k:
            tied = int(((magnitude - magnitude[k - 1]).abs() <= floor).sum())
            if tied > 1 and float(magnitude[k]) >= float(magnitude[k - 1]) - floor:
                return (f"{tied} neurons tie at the effect of rank {k} ({float(magnitude[k - 1]):.3g}): which of them are "
                        "listed is index order, not effect.")
        return None

    @property
    def pearson(self) -> float:
        return pearson_correlation(self.exact, self.estimate[self.layer])[0]

    def sign_agreement(self, k: int) -> float:
        """Among the top ``k`` neurons by exact effect, how often the estimate has the same sign."""
        top = self.top(k)
        return float((torch.sign(self.effect[top]) == torch.sign(self.estimated_effect[top])).float().mean())

    def to_dict(self, k: int = 10) -> dict[str, Any]:
        return {"layer": self.layer, "metric": self.metric_name, "corrupted_metric": self.corrupted_metric,
                "clean_metric": self.clean_metric, "exact": self.exact.tolist(),
                "top": [{"neuron": n, "effect": float(self.effect[n]), "estimated_effect": float(self.estimated_effect[n])}
                        for n in self.top(k)],
                "pearson_exact_vs_estimate": self.pearson, "sign_agreement_top": self.sign_agreement(k),
                "warning": self.warning(k),
                "estimate_max_abs_by_layer": (self.estimate - self.corrupted_metric).abs().max(dim=1).values.tolist()}


def compute_neuron_patching(engine: PatchingEngine, layer: int) -> NeuronPatching:
    return NeuronPatching(layer, engine.patch_neurons(layer), engine.neuron_attribution(), engine.corrupted_metric,
                          engine.clean_metric, engine.metric_name)


@dataclass(frozen=True)
class NeuronWrites:
    """What one neuron writes, read through the unembedding."""

    layer: int
    neuron: int
    effect: float
    direct_logit_diff: float  # W_out[neuron] . (W_U[:, correct] - W_U[:, incorrect]), mean over prompts
    promoted: tuple[tuple[str, float], ...]
    suppressed: tuple[tuple[str, float], ...]

    @property
    def name(self) -> str:
        return f"L{self.layer}N{self.neuron}"

    def to_dict(self) -> dict[str, Any]:
        return {"neuron": self.name, "effect": self.effect, "direct_logit_diff": self.direct_logit_diff,
                "promoted": [t for t, _ in self.promoted], "suppressed": [t for t, _ in self.suppressed]}


def compute_neuron_writes(
    model: Any, prompts: PromptSet, patching: NeuronPatching, neurons: list[int], *, k: int = 5
) -> list[NeuronWrites]:
    """For each neuron: its patching effect, its direct effect on the logit difference per unit of
    activation (before the final LayerNorm's scale, and a post-norm's, where the model has one), and the
    ``k`` tokens its output weights most promote and suppress through the unembedding."""
    w_out = model.W_out[patching.layer].float()  # [d_mlp, d_model]
    if describe(model).post_norms:  # the direction a neuron writes in, through Gemma 2's post-MLP norm
        w_out = w_out * post_norm_weights(model, "ln2_post")[patching.layer].to(w_out.device)
    w_u = model.W_U.float()
    direction = prompts.metric.direction(w_u).mean(dim=0)  # [d_model]
    decode = model.tokenizer.decode
    writes = []
    for n in neurons:
        read = w_out[n] @ w_u
        top, bottom = read.topk(k), (-read).topk(k)
        writes.append(NeuronWrites(
            patching.layer, n, float(patching.effect[n]), float(w_out[n] @ direction),
            tuple((decode([int(i)]), float(v)) for v, i in zip(top.values, top.indices)),
            tuple((decode([int(i)]), float(-v)) for v, i in zip(bottom.values, bottom.indices)),
        ))
    return writes


@dataclass(frozen=True)
class NeuronActivations:
    """Neurons' activations at the final position of every clean and corrupted prompt."""

    layer: int
    neurons: tuple[int, ...]
    clean: Float[Tensor, "neuron batch"]
    corrupted: Float[Tensor, "neuron batch"]
    prompts: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "neurons": list(self.neurons),
                "clean_mean": self.clean.mean(dim=1).tolist(), "corrupted_mean": self.corrupted.mean(dim=1).tolist()}


def compute_neuron_activations(model: Any, prompts: PromptSet, layer: int, neurons: list[int]) -> NeuronActivations:
    name = f"blocks.{layer}.mlp.hook_post"
    values = []
    for tokens in (prompts.clean_tokens, prompts.corrupted_tokens):
        _, acts = cache_activations(model, tokens.to(model.cfg.device), [name])
        values.append(to_host(at_final_pos(acts[name].float(), prompts.final_pos)[:, neurons].T))
    return NeuronActivations(layer, tuple(neurons), values[0], values[1], prompts.clean_prompts)
