"""Bootstrap intervals over prompts: how much a headline figure would move with other prompts of the task.

Every interval here is a seeded percentile bootstrap: the prompts are drawn with replacement
``resamples`` times (the same draws for every quantity of one analysis, so intervals of related figures
are consistent), the statistic is recomputed on each draw, and the interval runs from the 2.5th to the
97.5th percentile. It measures prompt noise only: not the noise of a different model, template or
corruption. With few prompts (fewer than ~16) the intervals are themselves rough.

The draws are made on the CPU with a seeded generator (so they do not depend on the device) and the
statistics are computed where the values are.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

RESAMPLES = 1000
LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """A ``level`` interval ``[low, high]`` around an estimate."""

    low: float
    high: float

    def to_list(self) -> list[float]:
        return [self.low, self.high]

    def excludes(self, value: float) -> bool:
        return not self.low <= value <= self.high

    def __str__(self) -> str:
        return f"[{self.low:.3f}, {self.high:.3f}]"


def resample_indices(n: int, *, resamples: int = RESAMPLES, seed: int = 0,
                     device: str | torch.device = "cpu") -> Int[Tensor, "resample n"]:
    """``resamples`` draws of ``n`` prompt indices with replacement, from a seeded CPU generator."""
    if n < 1:
        raise ValueError("a bootstrap needs at least one prompt")
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, n, (resamples, n), generator=generator).to(device)


def _percentiles(draws: Float[Tensor, "resample *rest"], level: float) -> tuple[Tensor, Tensor]:
    tail = (1 - level) / 2
    q = torch.tensor([tail, 1 - tail], dtype=draws.dtype, device=draws.device)
    low, high = torch.quantile(draws, q, dim=0)
    return low, high


def bootstrap_mean(values: Float[Tensor, "*rest batch"], *, resamples: int = RESAMPLES, seed: int = 0,
                   level: float = LEVEL) -> tuple[Tensor, Tensor]:
    """Percentile interval of the mean over the last dimension (prompts), elementwise over the others."""
    values = values.double()
    index = resample_indices(values.shape[-1], resamples=resamples, seed=seed, device=values.device)
    draws = values[..., index].mean(dim=-1)  # [*rest, resample]
    return _percentiles(draws.movedim(-1, 0), level)


def bootstrap_ratio(numerator: Float[Tensor, "*rest batch"], denominator: Float[Tensor, " batch"], *,
                    resamples: int = RESAMPLES, seed: int = 0, level: float = LEVEL) -> tuple[Tensor, Tensor]:
    """Percentile interval of ``mean(numerator) / mean(denominator)``, both means over the same draw."""
    numerator, denominator = numerator.double(), denominator.double()
    index = resample_indices(denominator.shape[-1], resamples=resamples, seed=seed, device=denominator.device)
    draws = numerator[..., index].mean(dim=-1) / denominator[index].mean(dim=-1)
    return _percentiles(draws.movedim(-1, 0), level)


def mean_interval(values: Float[Tensor, " batch"], *, resamples: int = RESAMPLES, seed: int = 0,
                  level: float = LEVEL) -> Interval:
    """:func:`bootstrap_mean` of one series, as an :class:`Interval`."""
    low, high = bootstrap_mean(values, resamples=resamples, seed=seed, level=level)
    return Interval(float(low), float(high))


def ratio_interval(numerator: Float[Tensor, " batch"], denominator: Float[Tensor, " batch"], *,
                   resamples: int = RESAMPLES, seed: int = 0, level: float = LEVEL) -> Interval:
    """:func:`bootstrap_ratio` of one series, as an :class:`Interval`."""
    low, high = bootstrap_ratio(numerator, denominator, resamples=resamples, seed=seed, level=level)
    return Interval(float(low), float(high))
