"""The task metric every analysis explains (a logit or probability difference between answer tokens), and
the correlation used to compare analyses."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from scipy.stats import t as student_t
from torch import Tensor

from helpers.tasks.spec import METRIC_KINDS, METRIC_NAMES, MetricKind  # the metrics a task file can name


def at_final_pos(
    activations: Float[Tensor, "batch pos *rest"], final_pos: Int[Tensor, " batch"]
) -> Float[Tensor, "batch *rest"]:
    """Each prompt's activation at its own final position (prompts are right-padded)."""
    rows = torch.arange(activations.shape[0], device=activations.device)
    return activations[rows, final_pos.to(activations.device)]




@dataclass(frozen=True)
class AnswerMetric:
    """A task's metric on each prompt's final-position logits.

    Each prompt has a set of correct and a set of incorrect answer tokens: one of each for most tasks
    (" Mary" against " John"), many for a task like greater-than (every year after YY against every
    year up to it). ``logit_diff`` is the mean logit of the correct tokens minus that of the incorrect
    ones (for one token each, the usual logit difference); ``prob_diff`` is the total probability of
    the correct tokens minus that of the incorrect ones.

    Whatever the task's metric, :meth:`logit_diff` is there too: it is linear in the final residual
    stream, so it is what direct logit attribution splits into components (:meth:`direction`).

    Stored as padded rows: ``tokens[i, j]`` is a candidate of prompt ``i`` and ``signs[i, j]`` is +1
    (correct), -1 (incorrect) or 0 (an unused slot).
    """

    kind: MetricKind
    tokens: Int[Tensor, "batch k"]
    signs: Int[Tensor, "batch k"]

    @classmethod
    def from_sets(cls, kind: MetricKind, correct: Sequence[Sequence[int]],
                  incorrect: Sequence[Sequence[int]]) -> AnswerMetric:
        """From each prompt's correct and incorrect tokens (each set non-empty, the two disjoint)."""
        if kind not in METRIC_KINDS:
            raise ValueError(f"metric kind {kind!r}: use one of {', '.join(METRIC_KINDS)}")
        width = max(len(c) + len(i) for c, i in zip(correct, incorrect))
        tokens, signs = [], []
        for good, bad in zip(correct, incorrect):
            if not good or not bad or set(good) & set(bad):
                raise ValueError(f"answer sets must be non-empty and disjoint: {list(good)} / {list(bad)}")
            pad = width - len(good) - len(bad)
            tokens.append([*good, *bad] + [0] * pad)
            signs.append([1] * len(good) + [-1] * len(bad) + [0] * pad)
        return cls(kind, torch.tensor(tokens, dtype=torch.long), torch.tensor(signs, dtype=torch.long))

    @classmethod
    def from_pairs(cls, answer_tokens: Int[Tensor, "batch 2"], kind: MetricKind = "logit_diff") -> AnswerMetric:
        """One correct and one incorrect token per prompt: ``answer_tokens[:, 0]`` and ``[:, 1]``."""
        signs = torch.tensor([1, -1]).expand(answer_tokens.shape[0], 2).clone()
        return cls(kind, answer_tokens.long().clone(), signs)

    @property
    def name(self) -> str:
        return METRIC_NAMES[self.kind]

    @property
    def is_linear(self) -> bool:
        """The metric is the logit difference itself (so a direction in the residual stream reads it)."""
        return self.kind == "logit_diff"

    @property
    def is_pairs(self) -> bool:
        """One correct and one incorrect token per prompt."""
        return self.signs.shape[1] == 2 and bool((self.signs == torch.tensor([1, -1])).all())

    def pairs(self) -> Int[Tensor, "batch 2"]:
        """``[correct, incorrect]`` per prompt, for tasks with one of each."""
        if not self.is_pairs:
            raise ValueError("this task's answers are sets of tokens, not one correct and one incorrect token; "
                             "use the task's metric (prompts.metric) instead")
        return self.tokens

    def correct_tokens(self, index: int) -> list[int]:
        return [int(t) for t, s in zip(self.tokens[index], self.signs[index]) if s > 0]

    def incorrect_tokens(self, index: int) -> list[int]:
        return [int(t) for t, s in zip(self.tokens[index], self.signs[index]) if s < 0]

    @property
    def weights(self) -> Float[Tensor, "batch k"]:
        """+1/(number correct) on correct tokens, -1/(number incorrect) on incorrect ones, 0 elsewhere."""
        signs = self.signs.float()
        n_correct = (self.signs > 0).sum(dim=1, keepdim=True).float()
        n_incorrect = (self.signs < 0).sum(dim=1, keepdim=True).float()
        return torch.where(self.signs > 0, signs / n_correct, signs / n_incorrect)

    def logit_diff(self, final_logits: Float[Tensor, "rows d_vocab"]) -> Float[Tensor, " rows"]:
        """Mean correct minus mean incorrect logit (rows may repeat the prompts, config by config)."""
        tokens, weights = self._rows(final_logits)
        return (final_logits.gather(-1, tokens) * weights.to(final_logits.dtype)).sum(dim=-1)

    def __call__(self, final_logits: Float[Tensor, "rows d_vocab"]) -> Float[Tensor, " rows"]:
        """The task's metric per prompt."""
        if self.is_linear:
            return self.logit_diff(final_logits)
        tokens, _ = self._rows(final_logits)
        signs = self.signs.to(final_logits.device).repeat(final_logits.shape[0] // self.signs.shape[0], 1)
        probs = final_logits.float().softmax(dim=-1).gather(-1, tokens)
        return (probs * signs.float()).sum(dim=-1)

    def direction(self, w_u: Float[Tensor, "d_model d_vocab"]) -> Float[Tensor, "batch d_model"]:
        """The residual direction (after the final LayerNorm) that :meth:`logit_diff` reads, per prompt."""
        tokens, weights = self.tokens.to(w_u.device), self.weights.to(w_u.device, w_u.dtype)
        return (w_u[:, tokens] * weights).sum(dim=-1).T

    def bias(self, b_u: Float[Tensor, " d_vocab"]) -> Float[Tensor, " batch"]:
        """The unembedding bias's share of :meth:`logit_diff`."""
        return (b_u[self.tokens.to(b_u.device)] * self.weights.to(b_u.device, b_u.dtype)).sum(dim=-1)

    def select(self, rows: Int[Tensor, " n"] | list[int]) -> AnswerMetric:
        rows = torch.as_tensor(rows, dtype=torch.long)
        tokens, signs = self.tokens[rows], self.signs[rows]
        width = int((signs != 0).sum(dim=1).max())  # drop slots no kept prompt uses
        return AnswerMetric(self.kind, tokens[:, :width], signs[:, :width])

    def to(self, device: str | torch.device) -> AnswerMetric:
        return AnswerMetric(self.kind, self.tokens.to(device), self.signs.to(device))

    def _rows(self, final_logits: Tensor) -> tuple[Tensor, Tensor]:
        repeat = final_logits.shape[0] // self.tokens.shape[0]
        return (self.tokens.to(final_logits.device).repeat(repeat, 1),
                self.weights.to(final_logits.device).repeat(repeat, 1))


def set_probability(logits: Float[Tensor, "*layer batch d_vocab"], tokens: Int[Tensor, "batch k"],
                    mask: Bool[Tensor, "batch k"]) -> Float[Tensor, "*layer batch"]:
    """Each prompt's total probability on its tokens ``tokens[i][mask[i]]`` (one answer, or a set)."""
    tokens = tokens.to(logits.device).expand(*logits.shape[:-1], tokens.shape[-1])
    probs = logits.float().softmax(dim=-1).gather(-1, tokens)
    return (probs * mask.to(logits.device)).sum(dim=-1)


def set_rank(logits: Float[Tensor, "batch d_vocab"], tokens: Int[Tensor, "batch k"],
             mask: Bool[Tensor, "batch k"]) -> Int[Tensor, " batch"]:
    """Each prompt's rank of its best token among ``tokens[i][mask[i]]``: 1 = the top prediction."""
    own = logits.gather(-1, tokens.to(logits.device)).masked_fill(~mask.to(logits.device), -math.inf)
    return (logits > own.max(dim=-1, keepdim=True).values).sum(dim=-1) + 1


def pearson_correlation(x: Float[Tensor, " n"], y: Float[Tensor, " n"]) -> tuple[float, float]:
    """Pearson's r and its two-sided p-value (t-test with n - 2 degrees of freedom); NaN when either
    variable is constant or there are fewer than 3 points."""
    n = x.numel()
    x, y = x.double() - x.double().mean(), y.double() - y.double().mean()
    denominator = float(x.norm() * y.norm())
    if n < 3 or denominator == 0.0:
        return math.nan, math.nan
    r = max(-1.0, min(1.0, float((x * y).sum()) / denominator))
    if abs(r) == 1.0:
        return r, 0.0
    statistic = r * math.sqrt((n - 2) / (1 - r * r))
    return r, float(2 * student_t.sf(abs(statistic), n - 2))
