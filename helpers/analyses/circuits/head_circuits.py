"""Circuit faithfulness: how much of the behaviour does a candidate circuit explain?

Context. A list of important heads is a hypothesis: "these heads, at these positions, are how the
model does the task". The IOI paper (Wang et al. 2022) tested its circuit by *mean-ablating* everything
outside it and measuring how much of the logit difference survived.

How. Every head not in the circuit has its output (``hook_z``; its output is ``z @ W_O``) replaced, at
every position, by its mean over a reference distribution; a circuit head kept only at some positions
(say the final token) is mean-ablated at the others. MLPs and embeddings are kept. Means are taken per
template and position (prompts of one template line up token for token), over either the task's
corrupted prompts or fresh prompts from the same templates (another seed, like the IOI paper's ABC
distribution). Mean ablation rather than zero ablation: a head's average output is part of the
model's normal operating point, and removing it would break more than the head's task-specific job.

- *Faithfulness* of a circuit: its metric (the task's, mean over prompts, unless another is given) as a fraction
  of the full model's. Keeping every head gives exactly 1; keeping none (the empty circuit) shows what
  is left without any head's task-specific output.
- The *curve* adds heads in order of importance and shows how many the behaviour needs.
- *Minimality*: how much faithfulness drops when each circuit head alone is removed. A head whose
  removal costs nothing is not needed in this circuit.

Positions a head is kept at are written ``final`` (the last token, where the answer is predicted), a
placeholder's name (``S``: every occurrence of its word), ``S#2`` (its second occurrence), any of those
with an offset (``S#1+1``: the token after the first ``S``), or a token index.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from helpers.analyses.ablations import ReferencePrompts, template_position_means
from helpers.analyses.circuits.faithfulness import fraction_of_full
from helpers.analyses.contrast import SMALL_GAP
from helpers.analyses.heads import Head, HeadScore, head_name
from helpers.analyses.stats import Interval, ratio_interval
from helpers.errors import SuiteError
from helpers.models.hooks import cache_activations, final_logits
from helpers.tasks.prompts import PromptSet

FINAL = "final"
_POSITION_RE = re.compile(r"^(?P<word>[A-Za-z][A-Za-z0-9_]*)(?:#(?P<occurrence>\d+))?(?P<offset>[+-]\d+)?$")
_HEAD_RE = re.compile(r"^L(?P<layer>\d+)H(?P<head>\d+)$|^(?P<layer2>\d+)\.(?P<head2>\d+)$")


class CircuitError(SuiteError, ValueError):
    """A circuit or one of its positions is malformed, or does not fit the model or the prompts."""


@dataclass(frozen=True)
class CircuitHead(Head):
    """A head of a circuit, kept at every position (``positions=None``) or only at those named."""

    positions: tuple[str | int, ...] | None = None

    def label(self) -> str:
        return self.name if self.positions is None else f"{self.name}@{','.join(map(str, self.positions))}"

    def to_dict(self) -> dict[str, Any]:
        return {**self.identity(), "positions": None if self.positions is None else list(self.positions)}


@dataclass(frozen=True)
class Circuit:
    """A named set of heads (in order of importance, when it has one)."""

    name: str
    heads: tuple[CircuitHead, ...]

    def __len__(self) -> int:
        return len(self.heads)

    def without(self, head: CircuitHead) -> Circuit:
        return Circuit(f"{self.name} without {head.name}", tuple(h for h in self.heads if h != head))

    def first(self, k: int) -> Circuit:
        return Circuit(f"top {k}", self.heads[:k])

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "heads": [h.to_dict() for h in self.heads]}


def _heads(spec: str, *heads: tuple[int, int]) -> tuple[CircuitHead, ...]:
    return tuple(CircuitHead(layer, head, (spec,)) for layer, head in heads)


# The IOI circuit in GPT-2 small (Wang et al. 2022, Figure 2), each class of head at the positions the
# paper keeps it: name movers, negative and backup name movers and S-inhibition heads at the final
# token; induction and duplicate-token heads at the second subject; previous-token heads at the token
# after the first subject.
IOI_PAPER_CIRCUIT = Circuit("IOI paper (GPT-2 small)", (
    *_heads(FINAL, (9, 9), (9, 6), (10, 0)),  # name movers
    *_heads(FINAL, (10, 7), (11, 10)),  # negative name movers
    *_heads(FINAL, (10, 10), (10, 6), (10, 2), (10, 1), (11, 2), (9, 7), (9, 0), (11, 9)),  # backup name movers
    *_heads(FINAL, (7, 3), (7, 9), (8, 6), (8, 10)),  # S-inhibition
    *_heads("S#2", (5, 5), (5, 8), (5, 9), (6, 9)),  # induction
    *_heads("S#2", (0, 1), (0, 10), (3, 0)),  # duplicate token
    *_heads("S#1+1", (2, 2), (4, 11)),  # previous token
))


# ---------------------------------------------------------------------------------------------------
# Reading circuits written by hand
# ---------------------------------------------------------------------------------------------------


def parse_circuit(value: Any, *, name: str, n_layers: int, n_heads: int) -> Circuit:
    """A circuit from a template parameter: a list whose items are ``"L9H9"`` (or ``"9.9"``, or
    ``[9, 9]``), kept at every position, or ``{"head": "L9H9", "positions": ["final", "S#2"]}``.

    Raises:
        CircuitError: naming the circuit, the item, what is wrong and the fix.
    """
    if isinstance(value, Circuit):
        return value
    if not isinstance(value, (list, tuple)) or not value:
        raise CircuitError(f"circuit {name!r} = {value!r}: expected a non-empty list of heads. "
                           "Fix: write e.g. [\"L9H9\", {\"head\": \"L10H0\", \"positions\": [\"final\"]}].")
    heads, seen = [], set()
    for item in value:
        positions = None
        head_value = item
        if isinstance(item, Mapping):
            unknown = set(item) - {"head", "positions"}
            if "head" not in item or unknown:
                raise CircuitError(f"circuit {name!r}: item {dict(item)!r} needs a 'head' and at most 'positions'. "
                                   "Fix: write {\"head\": \"L9H9\", \"positions\": [\"final\"]}.")
            head_value = item["head"]
            positions = _parse_positions(item.get("positions"), name, head_value)
        layer, head = _parse_head(head_value, name, n_layers, n_heads)
        if (layer, head) in seen:
            raise CircuitError(f"circuit {name!r}: head {head_name(layer, head)} is listed twice. "
                               "Fix: list each head once, with all the positions it is kept at.")
        seen.add((layer, head))
        heads.append(CircuitHead(layer, head, positions))
    return Circuit(name, tuple(heads))


def _parse_head(value: Any, name: str, n_layers: int, n_heads: int) -> tuple[int, int]:
    layer = head = None
    if isinstance(value, str) and (match := _HEAD_RE.match(value.strip())):
        layer = int(match["layer"] or match["layer2"])
        head = int(match["head"] or match["head2"])
    elif isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        layer, head = value
    if layer is None or head is None:
        raise CircuitError(f"circuit {name!r}: {value!r} is not a head. Fix: write it as \"L9H9\", \"9.9\" or [9, 9].")
    if not (0 <= layer < n_layers and 0 <= head < n_heads):
        raise CircuitError(f"circuit {name!r}: {value!r} is outside this model ({n_layers} layers x {n_heads} heads). "
                           f"Fix: use layers 0-{n_layers - 1} and heads 0-{n_heads - 1}.")
    return layer, head


def _parse_positions(value: Any, name: str, head: Any) -> tuple[str | int, ...] | None:
    if value is None:
        return None
    if isinstance(value, (str, int)):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value:
        raise CircuitError(f"circuit {name!r}, head {head!r}: positions = {value!r} must be a non-empty list. "
                           "Fix: e.g. [\"final\", \"S#2\"], or leave positions out to keep the head everywhere.")
    for position in value:
        if isinstance(position, bool) or not (isinstance(position, int) or _POSITION_RE.match(str(position))):
            raise CircuitError(f"circuit {name!r}, head {head!r}: position {position!r} is not understood. Fix: use "
                               "\"final\", a placeholder (\"S\"), an occurrence (\"S#2\"), an offset (\"S#1+1\") "
                               "or a token index.")
    return tuple(value)


def resolve_position(position: str | int, prompts: PromptSet, index: int) -> list[int]:
    """The token positions ``position`` names in clean prompt ``index``.

    Raises:
        CircuitError: the prompt has no such word or occurrence, or the position falls outside it.
    """
    final = int(prompts.final_pos[index])
    if isinstance(position, int):
        found = [position]
    else:
        match = _POSITION_RE.match(position)
        assert match is not None  # checked by parse_circuit
        word, occurrence, offset = match["word"], match["occurrence"], int(match["offset"] or 0)
        if word == FINAL:
            if occurrence is not None:
                raise CircuitError(f"position {position!r}: there is one final token. Fix: write {FINAL!r}, "
                                   f"or an offset such as '{FINAL}-1'.")
            found = [final + offset]
        else:
            words = prompts.word_positions[index] if prompts.word_positions else ()
            at = [w.position for w in words if w.role == word]
            if not at:
                roles = sorted({w.role for w in words})
                raise CircuitError(f"position {position!r}: prompt {index} ({prompts.clean_prompts[index]!r}) has no "
                                   f"word {word!r}. Fix: use one of {', '.join([FINAL, *roles])}.")
            if occurrence is not None:
                n = int(occurrence)
                if not 1 <= n <= len(at):
                    raise CircuitError(f"position {position!r}: {word!r} occurs {len(at)} time(s) in prompt {index} "
                                       f"({prompts.clean_prompts[index]!r}). Fix: use {word}#1 to {word}#{len(at)}.")
                at = [at[n - 1]]
            found = [p + offset for p in at]
    for p in found:
        if not 0 <= p <= final:
            raise CircuitError(f"position {position!r} is token {p} of prompt {index}, outside its tokens 0-{final}. "
                               "Fix: choose a position inside every prompt.")
    return found


def keep_mask(circuit: Circuit, prompts: PromptSet, n_layers: int, n_heads: int) -> Bool[Tensor, "batch pos layer head_index"]:
    """Where each head's output is kept (True) rather than mean-ablated."""
    batch, width = prompts.clean_tokens.shape
    keep = torch.zeros(batch, width, n_layers, n_heads, dtype=torch.bool)
    for h in circuit.heads:
        if h.positions is None:
            keep[:, :, h.layer, h.head] = True
            continue
        for b in range(batch):
            for position in h.positions:
                keep[b, resolve_position(position, prompts, b), h.layer, h.head] = True
    return keep


# ---------------------------------------------------------------------------------------------------
# Mean ablation
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MeanAblation:
    """For each of the task's prompts, every head's mean ``z`` over the reference prompts of the same
    template, at each position."""

    means: Float[Tensor, "layer batch pos head_index d_head"]
    reference: str

    def hooks(self, keep: Bool[Tensor, "rows pos layer head_index"]) -> list[tuple[str, Callable[..., Any]]]:
        """Forward hooks that mean-ablate every head output where ``keep`` is False. ``keep`` may cover
        several copies of the prompts, one after another (one circuit per copy)."""
        hooks = []
        copies = keep.shape[0] // self.means.shape[1]
        for layer in range(self.means.shape[0]):
            if bool(keep[:, :, layer].all()):
                continue  # nothing to ablate in this layer

            def ablate(z: Tensor, hook: Any, layer: int = layer) -> Tensor:
                kept = keep[:, :, layer, :, None].to(z.device)
                means = self.means[layer].to(z.device, z.dtype)
                return torch.where(kept, z, means.repeat(copies, 1, 1, 1) if copies > 1 else means)

            hooks.append((f"blocks.{layer}.attn.hook_z", ablate))
        return hooks


def compute_mean_ablation(model: Any, prompts: PromptSet, reference: ReferencePrompts) -> MeanAblation:
    """Each head's mean ``z`` over ``reference``, per template and position, laid out like ``prompts``
    (:func:`template_position_means`)."""
    n_layers = model.cfg.n_layers
    names = [f"blocks.{layer}.attn.hook_z" for layer in range(n_layers)]
    _, acts = cache_activations(model, reference.tokens.to(model.cfg.device), names)
    z = torch.stack([acts[name].float() for name in names], dim=2)  # [ref_batch, ref_pos, layer, head, d_head]
    means = template_position_means(z, reference, prompts)  # [batch, pos, layer, head, d_head]
    return MeanAblation(means.permute(2, 0, 1, 3, 4).contiguous(), reference.name)


# ---------------------------------------------------------------------------------------------------
# Faithfulness
# ---------------------------------------------------------------------------------------------------


Metric = Callable[[Float[Tensor, "batch d_vocab"]], Tensor]


@dataclass(frozen=True)
class CircuitFaithfulness:
    """A circuit's metric beside the full model's and the empty circuit's; its faithfulness is the IOI paper's,
    a fraction of the full model's metric (:mod:`.faithfulness`)."""

    circuit: Circuit
    metric: float
    full_metric: float
    empty_metric: float
    ci95: Interval | None = None  # of the faithfulness, over prompts (the task's metric only)

    @property
    def faithfulness(self) -> float:
        """The circuit's metric as a fraction of the full model's (:func:`.faithfulness.fraction_of_full`)."""
        return fraction_of_full(self.metric, self.full_metric)

    @property
    def empty_faithfulness(self) -> float:
        return fraction_of_full(self.empty_metric, self.full_metric)

    def to_dict(self) -> dict[str, Any]:
        return {"circuit": self.circuit.to_dict(), "metric": self.metric, "full_metric": self.full_metric,
                "empty_metric": self.empty_metric, "faithfulness": self.faithfulness,
                "ci95": None if self.ci95 is None else self.ci95.to_list(),
                "empty_faithfulness": self.empty_faithfulness}


class CircuitEvaluator:
    """Runs the model with everything outside a circuit mean-ablated and reads the metric.

    Args:
        model: the model.
        prompts: the task's clean prompts.
        ablation: the reference means (:func:`compute_mean_ablation`).
        metric: final-position logits ``[batch, d_vocab]`` -> a number; by default the task's metric
            (``prompts.metric``), mean over prompts.
    """

    def __init__(self, model: Any, prompts: PromptSet, ablation: MeanAblation, metric: Metric | None = None, *,
                 max_rows: int = 256):
        self.model, self.prompts, self.ablation, self.max_rows = model, prompts, ablation, max_rows
        self.given_metric = metric
        # a full model's metric this close to 0 makes fractions of it noise
        self.small_metric = SMALL_GAP["given" if metric is not None else prompts.metric.kind]
        self.n_layers, self.n_heads = model.cfg.n_layers, model.cfg.n_heads
        self.full_metric, self._full_per_prompt = self._run_all([None])[0]
        self.empty_metric, _ = self._run_all([Circuit("empty", ())])[0]

    def _run_all(self, circuits: Sequence[Circuit | None]) -> list[tuple[float, Tensor | None]]:
        """For each circuit, the metric with everything outside it ablated (``None``: nothing ablated), and
        the task metric per prompt (``None`` for a metric of your own). Several circuits share a forward
        pass, one copy of the prompts each (at most ``max_rows`` rows): each row is computed as it is alone."""
        batch = len(self.prompts)
        per_run = max(1, self.max_rows // batch)
        tokens = self.prompts.clean_tokens.to(self.model.cfg.device)
        results: list[tuple[float, Tensor | None]] = []
        for start in range(0, len(circuits), per_run):
            chunk = circuits[start: start + per_run]
            n = len(chunk)
            keep = torch.cat([keep_mask(all_heads(self.n_layers, self.n_heads) if c is None else c, self.prompts,
                                        self.n_layers, self.n_heads) for c in chunk])
            hooks = self.ablation.hooks(keep)  # none where every head is kept
            final = final_logits(self.model, tokens.repeat(n, 1), self.prompts.final_pos.repeat(n), hooks).float()
            for copy in final.view(n, batch, -1):
                if self.given_metric is not None:
                    results.append((float(self.given_metric(copy)), None))
                else:
                    per_prompt = self.prompts.metric(copy)
                    results.append((float(per_prompt.mean()), per_prompt))
        return results

    @property
    def warning(self) -> str | None:
        """Set when the full model's metric is negative or too close to 0 for fractions of it to mean much."""
        if self.full_metric <= 0:
            return (f"the full model's metric is {self.full_metric:.3f}: the model does not prefer the correct answer, "
                    "so faithfulness (a fraction of that) does not measure how much of a behaviour a circuit explains.")
        if self.full_metric < self.small_metric:
            return (f"the full model's metric is only {self.full_metric:.3f}: faithfulness, a fraction of it, "
                    "magnifies noise.")
        return None

    def evaluate(self, circuit: Circuit) -> CircuitFaithfulness:
        """The circuit's faithfulness, with its 95% bootstrap interval over prompts (:mod:`helpers.analyses.stats`)
        for the task's metric."""
        return self.evaluate_all([circuit])[0]

    def evaluate_all(self, circuits: Sequence[Circuit]) -> list[CircuitFaithfulness]:
        """:meth:`evaluate` for each circuit, several to a forward pass (the same numbers)."""
        evaluated = []
        for circuit, (metric, per_prompt) in zip(circuits, self._run_all(list(circuits))):
            interval = None
            if per_prompt is not None and self._full_per_prompt is not None:
                interval = ratio_interval(per_prompt, self._full_per_prompt)
            evaluated.append(CircuitFaithfulness(circuit, metric, self.full_metric, self.empty_metric, interval))
        return evaluated


def all_heads(n_layers: int, n_heads: int) -> Circuit:
    """The circuit of every head at every position (the full model)."""
    return Circuit("every head", tuple(CircuitHead(layer, head) for layer in range(n_layers) for head in range(n_heads)))


def circuit_from_ranking(ranking: Sequence[HeadScore], k: int, *, name: str | None = None) -> Circuit:
    """The first ``k`` heads of a ranking, kept at every position."""
    heads = tuple(CircuitHead(h.layer, h.head) for h in ranking[:k])
    return Circuit(name or f"top {len(heads)}", heads)


def random_circuit(n_layers: int, n_heads: int, size: int, *, seed: int = 0) -> Circuit:
    """``size`` heads drawn uniformly (seeded), kept at every position: the baseline any circuit should beat."""
    pairs = random.Random(seed).sample([(layer, head) for layer in range(n_layers) for head in range(n_heads)],
                                       min(size, n_layers * n_heads))
    return Circuit(f"random {size} (seed {seed})", tuple(CircuitHead(layer, head) for layer, head in sorted(pairs)))


@dataclass(frozen=True)
class FaithfulnessCurve:
    """Faithfulness as heads are added in order: ``fractions[k]`` keeps the first ``k`` (0 = none)."""

    heads: tuple[str, ...]
    fractions: tuple[float, ...]

    def heads_needed(self, target: float = 0.8) -> int | None:
        """The fewest heads whose faithfulness reaches ``target`` (None if never)."""
        return next((k for k, f in enumerate(self.fractions) if f >= target), None)

    def describe_needed(self, target: float = 0.8) -> str:
        n = self.heads_needed(target)
        if n is None:
            return f"{target:.0%} of the full model is not reached with {len(self.heads)} heads"
        return f"{target:.0%} of the full model needs {n} head{'' if n == 1 else 's'}"

    def to_dict(self) -> dict[str, Any]:
        return {"heads": list(self.heads), "fractions": list(self.fractions), "heads_for_80_percent": self.heads_needed()}


def compute_faithfulness_curve(evaluator: CircuitEvaluator, circuit: Circuit, max_k: int) -> FaithfulnessCurve:
    """Faithfulness keeping the first 0, 1, ..., ``max_k`` heads of ``circuit`` (in its order)."""
    heads = circuit.heads[:max_k]
    fractions = [evaluator.empty_metric / evaluator.full_metric]
    fractions += [f.faithfulness for f in evaluator.evaluate_all([replace(circuit, heads=heads[:k])
                                                                  for k in range(1, len(heads) + 1)])]
    return FaithfulnessCurve(tuple(h.label() for h in heads), tuple(fractions))


@dataclass(frozen=True)
class Minimality:
    """For each circuit head, the circuit's faithfulness without it, and the drop from the whole circuit's."""

    circuit: CircuitFaithfulness
    heads: tuple[str, ...]
    without: tuple[float, ...]

    @property
    def drops(self) -> tuple[float, ...]:
        return tuple(self.circuit.faithfulness - f for f in self.without)

    def to_dict(self) -> dict[str, Any]:
        return {"faithfulness": self.circuit.faithfulness,
                "heads": [{"head": h, "without": w, "drop": d} for h, w, d in zip(self.heads, self.without, self.drops)]}


def compute_minimality(evaluator: CircuitEvaluator, circuit: Circuit, *,
                       whole: CircuitFaithfulness | None = None) -> Minimality:
    """Faithfulness without each head of ``circuit`` (``whole``: its own evaluation, if already made)."""
    if whole is None or whole.circuit != circuit:
        whole = evaluator.evaluate(circuit)
    without = tuple(f.faithfulness for f in evaluator.evaluate_all([circuit.without(h) for h in circuit.heads]))
    return Minimality(whole, tuple(h.label() for h in circuit.heads), without)


def ioi_paper_circuit_applies(model: Any, prompts: PromptSet) -> str | None:
    """Why the IOI paper's circuit cannot be evaluated here (None when it can): it names GPT-2 small's
    heads (12 x 12) and the subject's positions (a placeholder ``S`` occurring twice)."""
    if (model.cfg.n_layers, model.cfg.n_heads) != (12, 12):
        return f"it names GPT-2 small's heads, and this model has {model.cfg.n_layers} x {model.cfg.n_heads}"
    try:
        keep_mask(IOI_PAPER_CIRCUIT, prompts, 12, 12)
    except CircuitError as err:
        return f"its positions do not fit this task's prompts ({err})"
    return None


@dataclass(frozen=True)
class CandidateChoice:
    """The candidate circuit and how it was chosen (said in the notebook and in results.json)."""

    circuit: Circuit
    rule: str  # one sentence: where the candidate comes from
    target: float | None  # the faithfulness the automatic candidate was chosen to reach
    reached: bool | None  # whether it reached it (None for a circuit written by hand)

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "target": self.target, "reached": self.reached, "size": len(self.circuit)}


def choose_circuit(value: Any, ranking: Sequence[HeadScore], curve: FaithfulnessCurve, *, target: float,
                   n_layers: int, n_heads: int) -> CandidateChoice:
    """The candidate circuit: ``value`` written by hand (see :func:`parse_circuit`), or with ``None`` the
    smallest prefix of ``ranking`` (heads in order of importance) whose faithfulness on ``curve`` (the
    same ranking, see :func:`compute_faithfulness_curve`) reaches ``target``, kept at every position.

    When no prefix on the curve reaches ``target`` the candidate is the whole curve, and the rule says so.
    When even the empty circuit reaches it (the heads' task-specific outputs are not needed), the candidate
    is the single most important head, so the sections that test a circuit have one to test.
    """
    if value is not None:
        circuit = parse_circuit(value, name="circuit", n_layers=n_layers, n_heads=n_heads)
        return CandidateChoice(circuit, f"the circuit written in `circuit` ({len(circuit)} heads)", None, None)
    needed = curve.heads_needed(target)
    if needed is None:
        k = len(curve.heads)
        rule = (f"no prefix of the first {k} heads by output patching reaches {target:.0%} of the full model: the "
                f"candidate is all {k} (raise `curve_max` to look further)")
    elif needed == 0:
        k = 1
        rule = (f"the empty circuit already reaches {target:.0%} of the full model, so no head is needed for it; the "
                "candidate is the single most important head by output patching")
    else:
        k = needed
        rule = (f"the smallest prefix of the heads in order of output patching (by magnitude) that reaches "
                f"{target:.0%} of the full model: the first {k}")
    circuit = circuit_from_ranking(ranking, k, name=f"top {min(k, len(ranking))} by output patching")
    return CandidateChoice(circuit, rule, target, needed is not None)


@dataclass(frozen=True)
class RandomBaseline:
    """Random circuits of one size, one per seed: what a circuit of that size scores by chance."""

    size: int
    seeds: tuple[int, ...]
    results: tuple[CircuitFaithfulness, ...]

    @property
    def faithfulness(self) -> tuple[float, ...]:
        return tuple(r.faithfulness for r in self.results)

    @property
    def mean(self) -> float:
        return sum(self.faithfulness) / len(self.results)

    @property
    def low(self) -> float:
        return min(self.faithfulness)

    @property
    def high(self) -> float:
        return max(self.faithfulness)

    def beaten_by(self, result: CircuitFaithfulness) -> bool:
        """Whether ``result`` scores above every random circuit (and, where it has one, with its whole
        interval above the best of them)."""
        bound = result.ci95.low if result.ci95 is not None else result.faithfulness
        return bound > self.high

    def describe(self) -> str:
        return (f"{len(self.results)} random circuits of {self.size} heads: faithfulness {self.mean:.2f} on average "
                f"(from {self.low:.2f} to {self.high:.2f})")

    def to_dict(self) -> dict[str, Any]:
        return {"size": self.size, "seeds": list(self.seeds),
                "faithfulness": list(self.faithfulness), "mean": self.mean, "min": self.low, "max": self.high}


def compute_random_baseline(evaluator: CircuitEvaluator, size: int, *, n_seeds: int = 5, seed: int = 0) -> RandomBaseline:
    """``n_seeds`` random circuits of ``size`` heads (seeds ``seed``, ``seed + 1``, ...), each evaluated."""
    if n_seeds < 1:
        raise CircuitError(f"random_circuits = {n_seeds}: expected at least 1. Fix: e.g. random_circuits = 5.")
    seeds = tuple(range(seed, seed + n_seeds))
    circuits = [random_circuit(evaluator.n_layers, evaluator.n_heads, size, seed=s) for s in seeds]
    return RandomBaseline(size, seeds, tuple(evaluator.evaluate_all(circuits)))


def comparison_circuits(value: Mapping[str, Any] | None, model: Any, prompts: PromptSet) -> tuple[list[Circuit], list[str]]:
    """The circuits shown beside the candidate, and notes on any left out.

    ``value`` maps names to circuits written by hand. With ``None``: the IOI paper's circuit, when it fits
    the model and the task's prompts. (Random circuits of the candidate's size are always shown beside it:
    :func:`compute_random_baseline`.)
    """
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    if value is not None:
        if not isinstance(value, Mapping):
            raise CircuitError(f"compare = {value!r}: expected a mapping from names to circuits. "
                               "Fix: e.g. {\"name movers\": [\"L9H9\", \"L9H6\", \"L10H0\"]}.")
        return [parse_circuit(v, name=str(name), n_layers=n_layers, n_heads=n_heads) for name, v in value.items()], []
    circuits: list[Circuit] = []
    notes = []
    reason = ioi_paper_circuit_applies(model, prompts)
    if reason is None:
        circuits.append(IOI_PAPER_CIRCUIT)
    else:
        notes.append(f"the IOI paper's circuit is left out: {reason}")
    return circuits, notes
