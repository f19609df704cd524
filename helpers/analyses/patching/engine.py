"""Activation patching: which activations carry the information that makes the answer correct?

Context. Run the model on a corrupted prompt (the evidence for the correct answer removed), but replace
one activation with its value from the clean prompt, and measure how far the output moves back towards
the clean answer. The metric is the task's metric (a logit or probability difference, see
:class:`helpers.tasks.metrics.AnswerMetric`) normalised so that 0 is the corrupted run and 1 is the clean run: a patch scoring 0.8 restores 80% of the behaviour on its own, so that activation carries
most of what distinguishes the two prompts. Patching the residual stream position by position shows
where information sits and when it moves between tokens; patching each head's output, values or
attention pattern shows which heads move it, and whether a head matters for *what* it moves (values) or
for *where* it looks (pattern).

The engine. ``transformer_lens.patching`` runs one full forward pass per patched activation, from the
embeddings to the full-vocabulary logits at every position. This engine gives the same numbers (the
tests assert equality within 1e-4 for every variant) while doing less:

- a patch at layer L restarts from the corrupted run's cached residual stream at layer L, since nothing
  before it changes;
- a head patch changes one head's contribution to its layer's output, ``(z_new - z_corrupted) @ W_O``,
  so the attention of that layer is not recomputed (where a post-norm couples the heads, Gemma 2, the
  layer's output is recomputed from every head's ``z``); value and pattern patches recombine the cached
  pattern and values (``z = pattern @ v``) of the two runs;
- keys and values of the positions before a patch are the corrupted run's, so they are reused;
- only the logits the metric needs are computed: for a logit difference, the answer tokens at each
  prompt's final position instead of the whole vocabulary at every position (a probability
  difference, or any metric of the full final logits, takes the full-vocabulary path at the final
  position);
- all patches of a layer run as one batch, in chunks of at most ``max_rows`` sequences to bound memory.

The engine's forward pass (:mod:`helpers.models.forward`) follows each architecture family the suite knows
(:mod:`helpers.models.architectures`). At start-up it checks that this forward pass reproduces the model's own
logits; if not (or for an architecture it does not know), it says why and patches through the model's
own hooks instead (:mod:`helpers.analyses.patching.through_hooks`): exact, several times slower, with every analysis
(attribution patching and neuron patching included). :attr:`PatchingEngine.path` says which ran.

Per-head kinds are per query head. With grouped-query attention, value patching gives one query head the
clean values it reads, leaving the other heads of its key/value group as they were.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from helpers.analyses.contrast import SMALL_GAP, Contrast
from helpers.analyses.heads import HeadScore, rank_heads_by_magnitude, top_of_sign
from helpers.analyses.patching.through_hooks import HookPatcher
from helpers.analyses.patching.variants import PER_POSITION, VARIANTS, PatchKind, Run, variant
from helpers.analyses.stats import Interval, bootstrap_ratio
from helpers.models.architectures import Architecture, describe
from helpers.models.devices import to_host
from helpers.models.forward import ForwardPass, LayerActivations, LayerStrategy, UnsupportedArchitecture
from helpers.tasks.metrics import AnswerMetric, at_final_pos, pearson_correlation
from helpers.tasks.prompts import PromptSet

FinalLogitsMetric = Callable[[Float[Tensor, "batch d_vocab"]], Tensor]
Path = Literal["fast path", "model hooks"]

# Per-position patches in one batch; the batch runs from its first position on, so keep them close.
_POSITIONS_PER_CHUNK = 2


def self_check_tolerance(dtype: torch.dtype, logit_scale: float) -> float:
    """How close the engine's forward pass must come to the model's logits before it is trusted: 1e-3 in
    float32; in half precision, 50 units of rounding of the largest logit (both passes round at every
    operation, in different orders)."""
    return max(1e-3, 50 * torch.finfo(dtype).eps * max(1.0, logit_scale))


@dataclass(frozen=True)
class NormalisedMetric:
    """The task's metric, mean over prompts, normalised: 0 = corrupted run, 1 = clean run.

    A logit difference only needs the answer tokens' logits at each prompt's final position, which is
    what lets the engine skip the full unembedding; calling this on full final logits gives the same value.
    """

    answers: AnswerMetric
    clean: float
    corrupted: float

    def normalise(self, per_prompt: Float[Tensor, "*config batch"]) -> Float[Tensor, "*config"]:
        return (per_prompt.mean(dim=-1) - self.corrupted) / (self.clean - self.corrupted)

    def __call__(self, final_logits: Float[Tensor, "batch d_vocab"]) -> Tensor:
        return self.normalise(self.answers(final_logits))


@dataclass(frozen=True)
class PatchingResult:
    """The metric after each patch: ``values[layer, pos]`` or ``values[layer, head]``."""

    kind: PatchKind
    values: Float[Tensor, "layer column"]
    column_labels: tuple[str, ...]
    metric_name: str

    @property
    def is_per_head(self) -> bool:
        return self.kind not in PER_POSITION

    def top(self, k: int) -> tuple[list[HeadScore], list[HeadScore]]:
        """Up to ``k`` heads of positive and up to ``k`` of negative effect, strongest first (per-head kinds)."""
        if not self.is_per_head:
            raise ValueError(f"{self.kind} patching is per position, not per head")
        return top_of_sign(self.values, k, "positive"), top_of_sign(self.values, k, "negative")

    def to_dict(self, k: int = 10, *, intervals: Mapping[str, Interval] | None = None) -> dict[str, Any]:
        """The values, and for per-head kinds the top heads of each sign, each with its 95% interval over
        prompts where ``intervals`` (:meth:`PatchingEngine.head_intervals`) has it."""
        data: dict[str, Any] = {"kind": self.kind, "metric": self.metric_name, "values": self.values.tolist(),
                                "columns": list(self.column_labels)}
        if self.is_per_head:
            intervals = intervals or {}

            def entry(h: HeadScore) -> dict[str, Any]:
                return {**h.to_dict(), **({"ci95": intervals[h.name].to_list()} if h.name in intervals else {})}

            positive, negative = self.top(k)
            data["top_positive"] = [entry(h) for h in positive]
            data["top_negative"] = [entry(h) for h in negative]
        return data


@dataclass(frozen=True)
class MetricAnchors:
    """The clean and corrupted runs that the normalised metric maps to 1 and 0."""

    n_prompts: int
    task_metric: str  # the task's metric ("logit difference", "probability difference")
    clean_value: float  # its mean on the clean and corrupted runs
    corrupted_value: float
    metric_name: str  # what the patching results report
    clean_metric: float
    corrupted_metric: float
    engine: str
    small_gap: float = SMALL_GAP["logit_diff"]

    @property
    def warning(self) -> str | None:
        """Said when the clean and corrupted runs barely differ (normalising then magnifies noise), or when
        the corrupted run scores higher than the clean one (the scale is upside down)."""
        gap = abs(self.clean_value - self.corrupted_value)
        if gap < self.small_gap:
            return (f"The clean and corrupted runs differ by only {gap:.3g} in mean {self.task_metric}, so the "
                    "normalised metric divides by a tiny number: every patching result here is mostly noise.")
        if self.clean_value < self.corrupted_value:
            return (f"The corrupted run scores higher than the clean one (mean {self.task_metric} "
                    f"{self.corrupted_value:.3f} against {self.clean_value:.3f}): the model does not do the task the "
                    "way the task file says, so 1 (\"clean\") is the worse behaviour and every sign below is the "
                    "other way round. Check the answers and the corruption, or the model.")
        return None

    def to_dict(self) -> dict[str, Any]:
        return {**vars(self), "warning": self.warning}


@dataclass(frozen=True)
class _Run:
    """One run's activations, as the engine's forward pass computes them. ``mlp_in`` is the stream each
    MLP reads: the stream after attention, or (parallel blocks) the stream entering the layer."""

    resid_pre: Float[Tensor, "layer batch pos d_model"]
    mlp_in: Float[Tensor, "layer batch pos d_model"]
    resid_final: Float[Tensor, "batch pos d_model"]
    attn_out: Float[Tensor, "layer batch pos d_model"]
    mlp_out: Float[Tensor, "layer batch pos d_model"]
    k: Float[Tensor, "layer batch pos kv_head d_head"]
    v: Float[Tensor, "layer batch pos kv_head d_head"]
    pattern: Float[Tensor, "layer batch head_index query_pos key_pos"]
    z: Float[Tensor, "layer batch pos head_index d_head"]

    def resid_post(self, layer: int) -> Float[Tensor, "batch pos d_model"]:
        return self.resid_pre[layer + 1] if layer + 1 < self.resid_pre.shape[0] else self.resid_final


class _KeepActivations(LayerStrategy):
    """Keeps each layer's activations, for :class:`_Run`."""

    def __init__(self) -> None:
        self.acts: dict[str, list[Tensor]] = {name: [] for name in _Run.__dataclass_fields__ if name != "resid_final"}

    def layer(self, layer: int, acts: LayerActivations) -> None:
        for name, values in self.acts.items():
            values.append(getattr(acts, name))


class _KeepGradients(LayerStrategy):
    """Retains the gradients attribution patching reads: values per query head, pattern, ``z`` and the
    MLP's neuron activations, appended to ``grads[name]`` layer by layer."""

    def __init__(self, fw: ForwardPass, grads: dict[str, list[Tensor]]):
        self.fw, self.grads = fw, grads

    def values(self, layer: int, v: Tensor) -> Tensor:
        return self.fw.by_query_head(v)

    def attention(self, layer: int, v: Tensor, pattern: Tensor, z: Tensor) -> None:
        for name, tensor in (("v", v), ("pattern", pattern), ("z", z)):
            tensor.retain_grad()
            self.grads.setdefault(name, []).append(tensor)

    def hidden(self, layer: int, hidden: Tensor) -> None:
        hidden.retain_grad()
        self.grads.setdefault("mlp_post", []).append(hidden)


class PatchingEngine:
    """Patches clean activations into the corrupted run, for every layer, position and head.

    Args:
        model: a model loaded by :func:`helpers.models.load.load_model` (eval mode).
        prompts: the task's prompts; clean and corrupted have equal lengths.
        metric: ``None`` for the task's metric, normalised (0 = corrupted run, 1 = clean run), or a
            function of the final-position logits ``[batch, d_vocab]`` returning a scalar tensor.
        max_rows: at most this many sequences in one forward pass (bounds memory).
        progress: show a progress bar per patching sweep.
    """

    def __init__(
        self,
        model: Any,
        prompts: PromptSet,
        *,
        metric: FinalLogitsMetric | None = None,
        max_rows: int = 256,
        progress: bool = True,
    ):
        if model.training:
            raise ValueError("activation patching needs model.eval(); load the model with helpers.models.load.load_model")
        self.model, self.prompts, self.max_rows, self.progress = model, prompts, max_rows, progress
        self.device = model.cfg.device
        self.contrast = contrast = Contrast.on(prompts, self.device)
        contrast.require_difference()
        self.clean_tokens, self.corrupted_tokens = contrast.clean_tokens, contrast.corrupted_tokens
        self.final_pos, self.answers = contrast.final_pos, contrast.answers
        self.arch: Architecture = describe(model)
        self.n_layers, self.n_heads = model.cfg.n_layers, model.cfg.n_heads
        self.column_labels = prompts.position_labels(0)

        with torch.no_grad():
            # the logits at every position, then the final ones: reading the final positions alone (as the other
            # analyses do, helpers.models.hooks) moves these anchors by a rounding error on some batches (1.2e-7 in the
            # normalised values on the demo's first template), which would change every figure of the notebook
            clean_final = at_final_pos(model(self.clean_tokens), self.final_pos)
            corrupted_final = at_final_pos(model(self.corrupted_tokens), self.final_pos)
        # the task's metric, mean over prompts, on the clean and corrupted runs
        self.task_metric = NormalisedMetric(self.answers, float(self.answers(clean_final.float()).mean()),
                                            float(self.answers(corrupted_final.float()).mean()))
        self.metric: FinalLogitsMetric = metric if metric is not None else self.task_metric
        self.metric_name = f"normalised {self.answers.name}" if metric is None else getattr(metric, "__name__", "metric")
        self.clean_metric = float(self.metric(clean_final))
        self.corrupted_metric = float(self.metric(corrupted_final))
        # the task metric per prompt, for intervals over prompts (head_intervals)
        self._clean_per_prompt = self.answers(clean_final.float())
        self._corrupted_per_prompt = self.answers(corrupted_final.float())

        self.fast_path_reason = self._start_fast_path(corrupted_final)
        self._hooks: HookPatcher | None = None
        if self.fast_path_reason is not None:
            warnings.warn(f"patching runs on the model's hooks (exact, slower): {self.fast_path_reason}", stacklevel=2)
            self._hooks = HookPatcher(model, contrast, self.metric, group_size=self.arch.group_size, max_rows=max_rows)

    # -- public ----------------------------------------------------------------------------------

    @property
    def uses_fast_path(self) -> bool:
        return self.fast_path_reason is None

    @property
    def path(self) -> Path:
        """Which implementation computes the patches: the engine's own forward pass, or the model's hooks."""
        return "fast path" if self.uses_fast_path else "model hooks"

    def for_template(self, template: int | None) -> PatchingEngine:
        """An engine on the prompts of one template, whose positions line up (this one if that is all
        of them)."""
        subset = self.prompts.for_template(template)
        if subset is self.prompts:
            return self
        return PatchingEngine(self.model, subset, metric=None if self.metric is self.task_metric else self.metric,
                              max_rows=self.max_rows, progress=self.progress)

    def anchors(self) -> MetricAnchors:
        return MetricAnchors(
            n_prompts=len(self.prompts),
            task_metric=self.answers.name,
            clean_value=self.task_metric.clean,
            corrupted_value=self.task_metric.corrupted,
            small_gap=self.contrast.small_gap,
            metric_name=self.metric_name,
            clean_metric=self.clean_metric,
            corrupted_metric=self.corrupted_metric,
            engine="fast path" if self.uses_fast_path else f"model hooks ({self.fast_path_reason})",
        )

    def patch(self, kind: PatchKind) -> PatchingResult:
        """Patch each clean activation of ``kind`` into the corrupted run; the metric for each patch."""
        variant(kind)  # a clear error for an unknown kind
        with torch.no_grad():
            if self._hooks is not None:
                values = self._hooks.patch(kind, self._layers(kind), self._first_difference)
            else:
                values = self._patch_fast(kind)
        columns = tuple(f"H{h}" for h in range(self.n_heads)) if kind not in PER_POSITION else self.column_labels
        return PatchingResult(kind, to_host(values.float()), columns, self.metric_name)

    def head_intervals(self, kind: PatchKind, heads: Sequence[HeadScore], *, seed: int = 0) -> dict[str, Interval]:
        """95% bootstrap intervals over prompts (:mod:`helpers.analyses.stats`) of each of ``heads``' normalised task
        metric after patching ``kind`` (a head kind), by head name. Empty for a metric of your own, whose
        value per prompt is not defined."""
        if kind in PER_POSITION:
            raise ValueError(f"{kind} patching is per position, not per head")
        if self.metric is not self.task_metric or not heads:
            return {}
        per_prompt = torch.stack([self._patched_head_per_prompt(kind, h.layer, h.head) for h in heads])
        low, high = bootstrap_ratio(per_prompt - self._corrupted_per_prompt,
                                    self._clean_per_prompt - self._corrupted_per_prompt, seed=seed)
        return {h.name: Interval(float(lo), float(hi)) for h, lo, hi in zip(heads, low, high)}

    def _patched_head_per_prompt(self, kind: PatchKind, layer: int, head: int) -> Float[Tensor, " batch"]:
        """The task metric of each prompt with one head patched (the value :meth:`patch` averages)."""
        with torch.no_grad():
            if self._hooks is not None:
                final_logits = self._hooks.patch_heads_final_logits(kind, layer, [head])[0]
            else:
                start = min(self._first_difference, self.clean_tokens.shape[1] - 1)
                x, begin, from_mlp = self._patched_stream(kind, layer, [head], start)
                final_logits = self.fw.unembed(self._finish(x.flatten(0, 1), begin, from_mlp=from_mlp, start=start))
        return self.answers(final_logits.float())

    # -- the engine's forward pass ------------------------------------------------------------------

    def _start_fast_path(self, corrupted_final: Tensor) -> str | None:
        """Run the engine's own forward pass on both prompt sets; return why it cannot be trusted, or
        None. Its final-position logits on the corrupted prompts must match the model's."""
        try:
            self.fw = ForwardPass(self.model, self.arch)
            with torch.no_grad():
                self.corrupted = self._forward(self.corrupted_tokens)
                own = self.fw.unembed(at_final_pos(self.corrupted.resid_final, self.final_pos))
        except UnsupportedArchitecture as err:
            return str(err)
        except (AttributeError, RuntimeError, KeyError, ValueError, IndexError) as err:
            return f"the engine cannot run this architecture ({type(err).__name__}: {err})"
        gap = float((own.float() - corrupted_final.float()).abs().max())
        tolerance = self_check_tolerance(own.dtype, float(corrupted_final.float().abs().max()))
        if not math.isfinite(gap) or gap > tolerance:
            return (f"the engine's forward pass differs from the model's by {gap:.2e} (more than {tolerance:.0e}) "
                    f"on this {self.arch.name} model")
        with torch.no_grad():
            self.clean = self._forward(self.clean_tokens)
        return None

    def _forward(self, tokens: Tensor) -> _Run:
        """The whole model on ``tokens``, keeping every activation the sweeps reuse."""
        kept = _KeepActivations()
        x = self.fw.run_layers(self.fw.embed(tokens), strategy=kept)
        return _Run(resid_final=x, **{name: torch.stack(values) for name, values in kept.acts.items()})

    def _final_stream_with_grads(self, tokens: Tensor, grads: dict[str, list[Tensor]]) -> Tensor:
        """The residual stream after the last layer, from an autograd graph the embeddings start; each
        layer's values (per query head), pattern, head outputs and neuron activations are appended to
        ``grads[name]`` with their gradients retained. Nothing is stacked (attribution patching reads the
        final stream and those gradients alone; the stacks were 0.3 GB at GPT-2 small's size, from their shapes)."""
        x = self.fw.embed(tokens).detach().requires_grad_(True)
        return self.fw.run_layers(x, strategy=_KeepGradients(self.fw, grads))

    def _finish(self, x: Tensor, layer: int, *, from_mlp: bool, start: int) -> Float[Tensor, "rows d_model"]:
        """Run a patched residual stream to the end and return it at each row's final position.

        ``x`` holds positions ``start`` onwards of ``n_configs * batch`` sequences, entering ``layer``
        (or, with ``from_mlp``, entering its MLP). Positions before ``start`` are identical to the
        corrupted run (the model is causal), so their keys and values come from the corrupted cache
        (:meth:`helpers.models.forward.ForwardPass.run_layers`).
        """
        batch = self.final_pos.shape[0]
        n_configs = x.shape[0] // batch
        final = self.final_pos.repeat(n_configs)
        result = self.fw.run_layers(x, layer, from_mlp=from_mlp, start=start, prefix_k=self.corrupted.k,
                                    prefix_v=self.corrupted.v, final_pos=final, repeat=n_configs)
        # a prompt that ends before ``start`` never sees the patch: its final state is the corrupted one
        untouched = final < start
        if bool(untouched.any()):
            corrupted_final = at_final_pos(self.corrupted.resid_final, self.final_pos).repeat(n_configs, 1)
            result = torch.where(untouched[:, None], corrupted_final, result)
        return result

    def _metric_of(self, final_resid: Float[Tensor, "rows d_model"], n_configs: int) -> Float[Tensor, " config"]:
        batch = self.final_pos.shape[0]
        if isinstance(self.metric, NormalisedMetric) and self.answers.is_linear:
            tokens = self.answers.tokens.repeat(n_configs, 1)  # [rows, k]
            weights = self.answers.weights.to(final_resid.dtype).repeat(n_configs, 1)
            logits = self.fw.answer_logits(final_resid, tokens)
            return self.metric.normalise((logits * weights).sum(-1).view(n_configs, batch))
        logits = self.fw.unembed(final_resid).view(n_configs, batch, -1)
        return torch.stack([torch.as_tensor(self.metric(logits[i])) for i in range(n_configs)])

    # -- the sweeps -----------------------------------------------------------------------------------

    @property
    def _first_difference(self) -> int:
        return self.contrast.first_difference

    def patch_resid_positions(self, layer: int, positions: list[int]) -> float:
        """The metric after patching the clean residual stream at ``positions`` of ``layer`` (all
        positions of layer 0 give the clean run, no positions the corrupted one)."""
        with torch.no_grad():
            if self._hooks is not None:
                return self._hooks.patch_resid_positions(layer, positions)
            x = self.corrupted.resid_pre[layer].clone()
            x[:, positions] = self.clean.resid_pre[layer][:, positions]
            start = min(positions, default=0)
            final = self._finish(x[:, start:], layer, from_mlp=False, start=start)
            return float(self._metric_of(final, 1)[0])

    def _patch_fast(self, kind: PatchKind) -> Float[Tensor, "layer column"]:
        n_pos = self.clean_tokens.shape[1]
        first = self._first_difference
        if kind in PER_POSITION:
            # before the first difference clean and corrupted activations are equal: no patch to make
            values = torch.full((self.n_layers, n_pos), self.corrupted_metric, device=self.device)
            columns_to_run = list(range(first, n_pos))
        else:
            values = torch.zeros(self.n_layers, self.n_heads, device=self.device)
            columns_to_run = list(range(self.n_heads))
        for layer in self._layers(kind):
            for columns in self._chunks(kind, columns_to_run):
                start = min(columns) if kind in PER_POSITION else min(first, n_pos - 1)
                x, begin, from_mlp = self._patched_stream(kind, layer, columns, start)
                final = self._finish(x.flatten(0, 1), begin, from_mlp=from_mlp, start=start)
                values[layer, columns] = self._metric_of(final, len(columns)).float()  # stays on the device
        return values

    def _stream_at(self, run: _Run, layer: int, point: str) -> tuple[Tensor, int, bool]:
        """``run``'s residual stream at ``point`` of ``layer`` (a variant's ``resumes``: entering the layer,
        after its attention, after its MLP), the layer to continue from, and whether its MLP is still to run.
        Where the MLP reads the stream before attention (parallel blocks), after attention is after the layer."""
        if point == "layer":
            return run.resid_pre[layer], layer, False
        if point == "attention" and not self.arch.parallel:
            return run.mlp_in[layer], layer, True
        return run.resid_post(layer), layer + 1, False

    def _patched_stream(self, kind: PatchKind, layer: int, columns: list[int], start: int) -> tuple[Tensor, int, bool]:
        """Positions ``start`` onwards of the corrupted residual stream with one patch per column
        (``[column, batch, pos, d_model]``), the layer to continue from, and whether that layer's
        attention is already accounted for. How the patch is made is ``kind``'s row (:mod:`.variants`)."""
        clean, corrupted = self.clean, self.corrupted
        row = VARIANTS[kind]
        n = len(columns)
        if row.per_position:
            assert row.stream is not None and row.resumes is not None
            base, begin, from_mlp = self._stream_at(corrupted, layer, row.resumes)
            if row.resumes == "layer":  # the stream itself is replaced
                patched_from = self._stream_at(clean, layer, row.resumes)[0]
            else:  # a block's output is replaced: the stream after it changes by the difference
                patched_from = base + (getattr(clean, row.stream)[layer] - getattr(corrupted, row.stream)[layer])
            x = base[:, start:].expand(n, *base[:, start:].shape).clone()
            for i, pos in enumerate(columns):
                x[i, :, pos - start] = patched_from[:, pos]
            return x, begin, from_mlp
        heads = torch.tensor(columns, device=self.device)
        z_corrupted = corrupted.z[layer][:, start:]  # [batch, pos, head, d_head]
        runs = {"clean": clean, "corrupted": corrupted}

        def pattern(run: Run) -> Tensor:
            return runs[run].pattern[layer][:, heads, start:]

        def values(run: Run) -> Tensor:
            return self.fw.by_query_head(runs[run].v[layer])[:, :, heads]

        z_new = row.patched_z(lambda run: runs[run].z[layer][:, start:, heads], pattern, values)
        if self.fw.linear_heads:
            change = torch.einsum("bqnd,ndm->nbqm", z_new - z_corrupted[:, :, heads], self.fw.w.W_O[layer][heads])
        else:  # a post-norm couples the heads: recompute the layer's output with each head replaced
            z = z_corrupted.expand(n, *z_corrupted.shape).clone()
            z[torch.arange(n, device=self.device), :, :, heads] = z_new.permute(2, 0, 1, 3)
            change = self.fw.attn_out(layer, z) - corrupted.attn_out[layer][:, start:]
        base, begin, from_mlp = self._stream_at(corrupted, layer, "attention")
        return base[:, start:] + change, begin, from_mlp

    def _layers(self, kind: PatchKind) -> Iterator[int]:
        layers = range(self.n_layers)
        if not self.progress:
            return iter(layers)
        return iter(tqdm(layers, desc=f"patching {kind}", unit="layer", mininterval=1.0, leave=False))

    def _chunks(self, kind: PatchKind, columns: list[int]) -> Iterator[list[int]]:
        per_chunk = max(1, self.max_rows // self.final_pos.shape[0])
        if kind in PER_POSITION:
            # a chunk runs from its first position on: few positions per chunk keep that short
            per_chunk = min(per_chunk, _POSITIONS_PER_CHUNK)
        for i in range(0, len(columns), per_chunk):
            yield columns[i : i + per_chunk]

    # -- neurons ----------------------------------------------------------------------------------------

    def patch_neurons(self, layer: int, neurons: list[int] | None = None) -> Float[Tensor, " neuron"]:
        """The metric after patching each neuron of ``layer``'s MLP (its activation after the
        nonlinearity, ``hook_post``) from the clean run into the corrupted run, at each prompt's final
        position only; every neuron, or those listed (in that order). One patch per neuron, batched: only
        the final position changes, so each patch adds ``(clean - corrupted activation) * W_out[neuron]``
        there (through the post-norm, where the model has one) and runs the later layers."""
        if not 0 <= layer < self.n_layers:
            raise ValueError(f"layer = {layer}: this model has layers 0-{self.n_layers - 1}.")
        if self._hooks is not None:
            with torch.no_grad():
                return self._hooks.patch_neurons(layer, neurons)
        fw = self.fw
        with torch.no_grad():
            clean_h, corrupted_h = (at_final_pos(fw.mlp_hidden(layer, run.mlp_in[layer]), self.final_pos)
                                    for run in (self.clean, self.corrupted))
            change = clean_h - corrupted_h  # [batch, d_mlp]
            batch = change.shape[0]
            chosen = torch.arange(change.shape[1]) if neurons is None else torch.tensor(neurons, dtype=torch.long)
            start = int(self.final_pos.min())
            base = self.corrupted.resid_post(layer)[:, start:]
            rows = torch.arange(batch, device=self.device)
            within = self.final_pos - start
            corrupted_out = at_final_pos(self.corrupted.mlp_out[layer], self.final_pos)
            values = torch.empty(len(chosen), device=self.device)
            per_chunk = max(1, self.max_rows // batch)
            for first in range(0, len(chosen), per_chunk):
                slots = torch.arange(first, min(first + per_chunk, len(chosen)))
                some = chosen[slots].to(self.device)
                x = base.expand(len(some), *base.shape).clone()
                if fw.w.mlp_post is None:
                    delta = change[:, some].T[..., None] * fw.w.W_out[layer][some][:, None]  # [n, batch, d_model]
                else:
                    hidden = corrupted_h.expand(len(some), -1, -1).clone()
                    index = torch.arange(len(some), device=self.device)
                    hidden[index, :, some] = clean_h[:, some].T
                    delta = fw.mlp_out_from_hidden(layer, hidden) - corrupted_out
                x[:, rows, within] += delta
                final = self._finish(x.flatten(0, 1), layer + 1, from_mlp=False, start=start)
                values[slots.to(self.device)] = self._metric_of(final, len(some)).float()
        return to_host(values)

    def neuron_attribution(self) -> Float[Tensor, "layer d_mlp"]:
        """Attribution-patching estimate of :meth:`patch_neurons` for every neuron of every layer, from one
        forward and one backward pass of the corrupted run (the final position only)."""
        if self._hooks is not None:
            grads = self._hooks.gradients()["post"]
            changes = [self._hooks.activation_changes(layer)["post"] for layer in range(self.n_layers)]
        else:
            kept: dict[str, list[Tensor]] = {}
            with torch.enable_grad():
                final = self._final_stream_with_grads(self.corrupted_tokens, kept)
                self._metric_of(at_final_pos(final, self.final_pos), 1)[0].backward()
            grads = [hidden.grad for hidden in kept["mlp_post"]]
            with torch.no_grad():
                changes = [self.fw.mlp_hidden(layer, self.clean.mlp_in[layer]) - hidden.detach()
                           for layer, hidden in enumerate(kept["mlp_post"])]
        estimates = [(at_final_pos(change, self.final_pos) * at_final_pos(grad, self.final_pos)).sum(dim=0)
                     for change, grad in zip(changes, grads)]
        return to_host(torch.stack(estimates).float()) + self.corrupted_metric

    # -- attribution patching ---------------------------------------------------------------------------

    def attribution_patching(self) -> dict[PatchKind, PatchingResult]:
        """Gradient estimates of head output, value and pattern patching, from one forward and one
        backward pass of the corrupted run: metric(corrupted) + (clean - corrupted) . d metric / d act.

        Exact where the metric is linear in the activation, an approximation elsewhere (attention
        patterns and LayerNorm are not linear): use it to screen, and check the heads that matter
        with exact patching.
        """
        if self._hooks is not None:
            grads = self._hooks.gradients()
            changes = [self._hooks.activation_changes(layer) for layer in range(self.n_layers)]
        else:
            kept: dict[str, list[Tensor]] = {}
            with torch.enable_grad():
                final = self._final_stream_with_grads(self.corrupted_tokens, kept)
                self._metric_of(at_final_pos(final, self.final_pos), 1)[0].backward()
            grads = {name: [t.grad for t in kept[name]] for name in ("z", "v", "pattern")}
            changes = [{"z": self.clean.z[layer] - kept["z"][layer].detach(),
                        "v": self.fw.by_query_head(self.clean.v[layer]) - kept["v"][layer].detach(),
                        "pattern": self.clean.pattern[layer] - kept["pattern"][layer].detach()}
                       for layer in range(self.n_layers)]
        results: dict[PatchKind, PatchingResult] = {}
        for kind, row in VARIANTS.items():
            if row.attribution_site is None:
                continue
            name = row.attribution_site
            head_axis = 1 if name == "pattern" else 2  # pattern [batch, head, q, k]; z and v [batch, pos, head, d]
            estimate = torch.zeros(self.n_layers, self.n_heads, device=self.device)
            for layer in range(self.n_layers):
                product = (changes[layer][name] * grads[name][layer]).transpose(0, head_axis)
                estimate[layer] = product.reshape(self.n_heads, -1).sum(-1).detach().float()
            results[kind] = PatchingResult(kind, to_host(estimate) + self.corrupted_metric,  # type: ignore[arg-type]
                                           tuple(f"H{h}" for h in range(self.n_heads)),
                                           f"{self.metric_name} (attribution estimate)")
        return results


@dataclass(frozen=True)
class AttributionAgreement:
    """How well attribution patching's estimates match exact patching, head by head."""

    kind: PatchKind
    pearson: float
    max_abs_diff: float
    largest_gaps: tuple[HeadScore, ...]  # value = estimate - exact

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "pearson": self.pearson, "max_abs_diff": self.max_abs_diff,
                "largest_gaps": [h.to_dict() for h in self.largest_gaps]}


def compare_attribution(exact: PatchingResult, estimate: PatchingResult, *, k: int = 5) -> AttributionAgreement:
    """Pearson correlation of the estimates with the exact values, and the heads where they differ most."""
    x, y = exact.values.flatten().double(), estimate.values.flatten().double()
    pearson = pearson_correlation(x, y)[0]
    gap = estimate.values - exact.values
    return AttributionAgreement(exact.kind, pearson, float(gap.abs().max()), tuple(rank_heads_by_magnitude(gap, k)))
