"""Vector arithmetic: does a component's output act as an "update vector" other prompts can use?

Context. If an MLP layer's output at the final position carries "move to the next item" or "the answer
is the indirect object", its mean over the task's prompts is a direction in the residual stream.
Adding that direction to the residual stream of other prompts (the corrupted ones, where the evidence
is gone, or prompts you give) should then push them towards the intended answer, in the way
word2vec's ``king - man + woman`` lands near ``queen``.

How. The update vector is the component's output (``hook_mlp_out`` or ``hook_attn_out`` of one layer)
at each clean prompt's final position, averaged over prompts. It is added, times ``scale``, to the
residual stream after each of the chosen layers (``hook_resid_post``) at each target prompt's final
position. Predictions before and after are compared: top tokens, the intended answer's probability and
rank, and a logit lens of the answer's probability after each layer. Random vectors of the same norm,
added the same way, are the baseline: an effect they also produce is not about the vector's direction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from helpers.analyses.dla import FinalPositionCache
from helpers.models.devices import to_host
from helpers.models.hooks import cache_activations
from helpers.models.load import folded_unembed
from helpers.tasks.metrics import at_final_pos, set_probability, set_rank
from helpers.tasks.prompts import PromptSet, answer_token

Component = Literal["mlp", "attn"]
COMPONENTS: tuple[Component, ...] = ("mlp", "attn")


@dataclass(frozen=True)
class UpdateVector:
    """A direction in the residual stream, and where it came from."""

    vector: Float[Tensor, " d_model"]
    source: str
    typical_norm: float | None = None  # the mean norm of the outputs it averages, where it is a mean

    @property
    def norm(self) -> float:
        return float(self.vector.norm())

    @property
    def warning(self) -> str | None:
        """Said when the vector is (nearly) zero: adding it can change nothing, so every figure of it is empty."""
        if self.typical_norm is None:
            return None
        if self.norm <= 1e-6 or self.norm < 0.01 * self.typical_norm:
            return (f"the vector's norm is {self.norm:.3g}, against {self.typical_norm:.3g} for one prompt's output: "
                    "the outputs cancel over the prompts (or the component writes almost nothing), so adding the "
                    "vector changes next to nothing and so does a random vector of its norm. Choose another layer "
                    "or component.")
        return None


def extract_update_vector(cache: FinalPositionCache, *, component: str, layer: int) -> UpdateVector:
    """The mean, over the clean prompts, of ``component``'s output in ``layer`` at the final position,
    read from the clean run (:func:`helpers.analyses.dla.run_final_position_cache`)."""
    if component not in COMPONENTS:
        raise ValueError(f"component = {component!r}: use one of {', '.join(COMPONENTS)}.")
    if not 0 <= layer < cache.n_layers:
        raise ValueError(f"layer = {layer}: this model has layers 0-{cache.n_layers - 1}. Fix: choose one of them.")
    outputs = (cache.mlp_out if component == "mlp" else cache.attn_out)[layer]  # [batch, d_model]
    return UpdateVector(outputs.mean(dim=0), f"L{layer} {component} output, mean over {outputs.shape[0]} clean prompts",
                        float(outputs.norm(dim=-1).mean()))


def random_like(vector: UpdateVector, seed: int) -> UpdateVector:
    """A random direction (seeded, Gaussian) with the same norm."""
    generator = torch.Generator().manual_seed(seed)
    direction = torch.randn(vector.vector.shape, generator=generator)
    return UpdateVector(direction / direction.norm() * vector.norm, f"random vector (seed {seed}), same norm")


@dataclass(frozen=True)
class Targets:
    """The prompts the vector is added to, and the answer each should move towards: one token, or a set
    (``answers[i]`` where ``answer_mask[i]``) for a task whose correct answers are a set."""

    tokens: Int[Tensor, "batch pos"]
    final_pos: Int[Tensor, " batch"]
    answers: Int[Tensor, "batch k"]
    answer_mask: Bool[Tensor, "batch k"]
    prompts: tuple[str, ...]
    answer_texts: tuple[str, ...]
    name: str

    def answer_probs(self, logits: Float[Tensor, "*layer batch d_vocab"]) -> Float[Tensor, "*layer batch"]:
        """The answer's probability (the set's total)."""
        return set_probability(logits, self.answers, self.answer_mask)

    def answer_ranks(self, logits: Float[Tensor, "batch d_vocab"]) -> Int[Tensor, " batch"]:
        """1 = the answer (the set's best token) is the top prediction."""
        return set_rank(logits, self.answers, self.answer_mask)


def target_prompts(value: Any, prompts: PromptSet, model: Any) -> Targets:
    """``"corrupted"``: the task's corrupted prompts, each towards its clean prompt's correct answer. Or a
    list of ``{"prompt": ..., "answer": " ..."}`` (single-token answers, leading space included)."""
    if value == "corrupted":
        metric = prompts.metric
        return Targets(prompts.corrupted_tokens, prompts.final_pos, metric.tokens, metric.signs > 0,
                       prompts.corrupted_prompts, prompts.correct_answers,
                       "the task's corrupted prompts, towards the clean prompts' correct answers")
    if not isinstance(value, Sequence) or isinstance(value, str) or not value:
        raise ValueError(f"targets = {value!r}: use \"corrupted\" or a list of {{\"prompt\": ..., \"answer\": \" ...\"}}.")
    tokenizer = model.tokenizer
    bos = [tokenizer.bos_token_id] if model.cfg.default_prepend_bos and tokenizer.bos_token_id is not None else []
    rows, answers, texts, answer_texts = [], [], [], []
    for i, item in enumerate(value):
        if not isinstance(item, Mapping) or set(item) != {"prompt", "answer"}:
            raise ValueError(f"targets[{i}] = {item!r}: each target needs exactly a 'prompt' and an 'answer'. "
                             "Fix: e.g. {\"prompt\": \"When Tom and Sid went out, Sid gave it to\", \"answer\": \" Tom\"}.")
        token, pieces = answer_token(tokenizer, item["prompt"], item["answer"])
        if token is None:
            raise ValueError(f"targets[{i}].answer = {item['answer']!r} is {len(pieces)} tokens {pieces} after its "
                             "prompt. Fix: use a single token, with its leading space.")
        rows.append(bos + list(tokenizer(item["prompt"], add_special_tokens=False)["input_ids"]))
        answers.append(token)
        texts.append(item["prompt"])
        answer_texts.append(item["answer"])
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    width = max(len(r) for r in rows)
    tokens = torch.tensor([r + [pad] * (width - len(r)) for r in rows], dtype=torch.long)
    return Targets(tokens, torch.tensor([len(r) - 1 for r in rows]), torch.tensor(answers)[:, None],
                   torch.ones(len(rows), 1, dtype=torch.bool), tuple(texts), tuple(answer_texts),
                   f"{len(rows)} prompts given")


@dataclass(frozen=True)
class VectorRun:
    """The target prompts' predictions with one vector added (or none)."""

    label: str
    final_logits: Float[Tensor, "batch d_vocab"]
    lens_probs: Float[Tensor, "layer batch"]  # the answer's probability read after each layer
    targets: Targets

    @property
    def answer_probs(self) -> Float[Tensor, " batch"]:
        return self.targets.answer_probs(self.final_logits)

    @property
    def answer_ranks(self) -> Int[Tensor, " batch"]:
        """1 = top prediction."""
        return self.targets.answer_ranks(self.final_logits)

    @property
    def top_share(self) -> float:
        """How often the intended answer is the top prediction."""
        return float((self.answer_ranks == 1).float().mean())


def run_with_vector(
    model: Any, targets: Targets, vector: UpdateVector | None, *, layers: Sequence[int], scale: float = 1.0,
    label: str | None = None,
) -> VectorRun:
    """Run the targets with ``scale * vector`` added after each of ``layers`` at the final position."""
    n_layers = model.cfg.n_layers
    for layer in layers:
        if not 0 <= layer < n_layers:
            raise ValueError(f"add_at contains layer {layer}: this model has layers 0-{n_layers - 1}.")
    rows = torch.arange(targets.tokens.shape[0])
    hooks = []
    if vector is not None:
        addition = scale * vector.vector

        def add(resid: Tensor, hook: Any) -> Tensor:
            resid = resid.clone()
            resid[rows, targets.final_pos.to(resid.device)] += addition.to(resid.device, resid.dtype)
            return resid

        hooks = [(f"blocks.{layer}.hook_resid_post", add) for layer in sorted(set(layers))]
    names = [f"blocks.{layer}.hook_resid_post" for layer in range(n_layers)]
    logits, acts = cache_activations(model, targets.tokens.to(model.cfg.device), names, fwd_hooks=hooks,
                                     final_pos=targets.final_pos)
    resid = torch.stack([at_final_pos(acts[name].float(), targets.final_pos) for name in names])  # [layer, batch, d]
    lens_probs = targets.answer_probs(folded_unembed(resid, model))
    return VectorRun(label or (vector.source if vector is not None else "no vector"),
                     to_host(logits.float()), to_host(lens_probs), targets)


@dataclass(frozen=True)
class VectorArithmetic:
    """Before, with the update vector, and with norm-matched random vectors."""

    vector: UpdateVector
    targets: Targets
    layers: tuple[int, ...]
    scale: float
    before: VectorRun
    after: VectorRun
    random: tuple[VectorRun, ...]

    @property
    def random_top_share(self) -> float:
        return sum(r.top_share for r in self.random) / len(self.random) if self.random else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {
            "vector": self.vector.source, "norm": self.vector.norm, "warning": self.vector.warning,
            "targets": self.targets.name,
            "add_at": list(self.layers), "scale": self.scale,
            "top_share": {"before": self.before.top_share, "vector": self.after.top_share,
                          "random": [r.top_share for r in self.random], "random_mean": self.random_top_share},
            "answer_prob": {"before": float(self.before.answer_probs.mean()), "vector": float(self.after.answer_probs.mean()),
                            "random_mean": (sum(float(r.answer_probs.mean()) for r in self.random) / len(self.random)
                                            if self.random else float("nan"))},
        }


def compute_vector_arithmetic(
    model: Any, targets: Targets, vector: UpdateVector, *, layers: Sequence[int], scale: float = 1.0,
    n_random: int = 5, seed: int = 0,
) -> VectorArithmetic:
    """The targets without the vector, with it, and with ``n_random`` random vectors of its norm."""
    before = run_with_vector(model, targets, None, layers=layers)
    after = run_with_vector(model, targets, vector, layers=layers, scale=scale)
    randoms = tuple(run_with_vector(model, targets, random_like(vector, seed + i), layers=layers, scale=scale)
                    for i in range(n_random))
    return VectorArithmetic(vector, targets, tuple(sorted(set(layers))), scale, before, after, randoms)


@dataclass(frozen=True)
class PredictionChange:
    """One target prompt's top tokens before and after."""

    prompt: str
    answer: str
    before: tuple[tuple[str, float], ...]
    after: tuple[tuple[str, float], ...]


def prediction_change(model: Any, result: VectorArithmetic, index: int, k: int = 5) -> PredictionChange:
    """Top ``k`` tokens (with probabilities) of one target prompt, before and after adding the vector."""
    def top(run: VectorRun) -> tuple[tuple[str, float], ...]:
        probs = run.final_logits[index].softmax(dim=-1)
        values, ids = probs.topk(k)
        return tuple((model.tokenizer.decode([int(i)]), float(v)) for v, i in zip(values, ids))

    return PredictionChange(result.targets.prompts[index], result.targets.answer_texts[index], top(result.before),
                            top(result.after))


def default_layer(components: Any, component: str) -> int:
    """The layer whose ``component`` has the largest direct logit attribution (from
    :func:`helpers.analyses.dla.compute_component_attribution`)."""
    suffix = f" {component}"
    scores = {int(label[1:-len(suffix)]): float(value) for label, value in zip(components.labels, components.mean)
              if label.startswith("L") and label.endswith(suffix)}
    if not scores:
        raise ValueError(f"component = {component!r}: use one of {', '.join(COMPONENTS)}.")
    return max(scores, key=lambda layer: scores[layer])
