"""Naming and ranking attention heads, shared by every per-head analysis."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor


@dataclass(frozen=True)
class Head:
    """One attention head: its layer and index, named ``L{layer}H{head}`` (:func:`head_name`). The records
    of a head in an analysis (:class:`HeadScore`, ``ImportantHead``, ``CircuitHead``) are heads with more."""

    layer: int
    head: int

    @property
    def name(self) -> str:
        return head_name(self.layer, self.head)

    def identity(self) -> dict[str, Any]:
        """The keys every head record in results.json starts with."""
        return {"head": self.name, "layer": self.layer, "head_index": self.head}


@dataclass(frozen=True)
class HeadScore(Head):
    """One head and its score on some analysis."""

    value: float

    def to_dict(self) -> dict[str, object]:
        return {**self.identity(), "value": self.value}


def head_name(layer: int, head: int) -> str:
    return f"L{layer}H{head}"


def rank_heads(scores: Float[Tensor, "layer head_index"], k: int, *, largest: bool = True) -> list[HeadScore]:
    """The ``k`` heads with the largest (or, with ``largest=False``, smallest) scores, best first.

    Ties keep layer-then-head order, so the top 3 are always the first 3 of the top 10.
    """
    n_heads = scores.shape[1]
    values, flat = torch.sort(scores.flatten().float(), descending=largest, stable=True)
    return [HeadScore(int(i) // n_heads, int(i) % n_heads, float(v)) for v, i in zip(values[:k], flat[:k])]


def rank_heads_by_magnitude(scores: Float[Tensor, "layer head_index"], k: int) -> list[HeadScore]:
    """The ``k`` heads with the largest absolute scores, largest first, each with its signed score."""
    return [HeadScore(h.layer, h.head, float(scores[h.layer, h.head])) for h in rank_heads(scores.abs(), k)]


Sign = Literal["positive", "negative"]


def top_of_sign(scores: Float[Tensor, "layer head_index"], k: int, sign: Sign) -> list[HeadScore]:
    """Up to ``k`` heads whose score has ``sign`` (strictly: a zero is neither), strongest first.

    Every table of "positive" or "negative" heads is built from this, so it lists fewer rows when fewer
    heads have that sign, never a head of the other sign or a zero.
    """
    ranked = rank_heads(scores, k, largest=sign == "positive")
    return [h for h in ranked if (h.value > 0 if sign == "positive" else h.value < 0)]
