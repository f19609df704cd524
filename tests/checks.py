"""How tests compare a result with an independent computation, so that every comparison can fail.

A comparison is only evidence if a wrong answer would fail it. :func:`assert_matches` therefore checks
three things: the result equals the reference within a tolerance that follows from the numerics; the
reference varies across what is compared by far more than that tolerance (else a constant, or any
shuffle of it, would pass too); and deliberately wrong versions of the result (shifted by one place,
shuffled, replaced by their mean) do fail. Scalars, which cannot vary, are checked against a baseline
that a wrong implementation would plausibly give instead (:func:`assert_scalar_matches`).

Tolerances are written once per kind of comparison, each with the reason for its size. They scale with
the reference's magnitude (float32 keeps about 7 significant digits, whatever the size of the numbers).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from helpers.analyses.patching.engine import PatchingEngine
from helpers.tasks.prompts import PromptSet


@dataclass(frozen=True)
class Tolerance:
    """``|actual - expected| <= factor * scale`` elementwise, the scale being the reference's largest
    magnitude (float32 rounding is relative to the size of the numbers), and at least ``floor``: the
    size of the numbers a quantity is computed from, where that is larger than the quantity itself."""

    factor: float
    reason: str
    floor: float = 0.0

    def atol(self, expected: Tensor, scale: float | None = None) -> float:
        return self.factor * (max(self.floor, float(expected.detach().abs().max())) if scale is None else scale)


# Two float32 implementations of the same forward pass (ours and the model's, or the model's and plain
# transformers'): rounding of about 1e-7 per operation, accumulated over a few layers of sums of a few
# hundred products, gives differences of a few 1e-6 on order-1 values (measured: at most 2e-6).
FLOAT32_FORWARD = Tolerance(1e-5, "two float32 forward passes of a few layers differ by rounding, a few 1e-6")
# The same for a metric normalised to 0 (corrupted run) and 1 (clean run): its scale is 1 even where the
# values compared are small (one neuron's effect), since every value is a difference of runs of scale 1.
FLOAT32_PATCHING = Tolerance(1e-5, "patched float32 runs by two routes differ by a few 1e-6 of the clean run", 1.0)
# Gradients by two routes (our forward pass's autograd and the model's hooks): one more pass of the same
# size, so about twice the forward rounding; estimates of the normalised metric, so of scale 1 too.
FLOAT32_GRADIENT = Tolerance(2e-5, "a float32 forward and backward pass by two routes differ by rounding, ~1e-5", 1.0)
# The same products summed in another order inside one library (a batched einsum against a loop).
FLOAT32_REORDERED = Tolerance(1e-6, "the same float32 products summed in another order differ by a few ulps")
# Logits from folded (compatibility mode) against unfolded LayerNorm weights: the unembedding is
# centred and the LayerNorm's weight multiplied into W_U, d_vocab-wide rows of order-10 values.
FLOAT32_FOLDED = Tolerance(2e-5, "folded and unfolded float32 weights differ by rounding of order-10 logits")


# A seed per architecture whose toy model (weight std 0.3) has IOI clean and corrupted runs that differ by
# at least 0.25 in mean logit difference: effects of order 1, so the normalised metric magnifies no
# rounding into an effect. Shared by every test that builds one toy per family.
SEEDS = {"gpt2": 0, "gpt_neo": 3, "gpt_neox": 1, "gptj": 2, "llama": 1, "mistral": 2, "qwen2": 1, "gemma": 3,
         "gemma2": 2, "opt": 0}


def _close(actual: Tensor, expected: Tensor, atol: float) -> bool:
    return actual.shape == expected.shape and bool(((actual - expected).abs() <= atol).all())


def mutations(actual: Tensor, *, seed: int = 0) -> dict[str, Tensor]:
    """Wrong versions of a result that a broken implementation could produce: the values shifted by one
    place (an off-by-one position or head), shuffled, and all replaced by their mean."""
    flat = actual.detach().flatten()
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(flat.numel(), generator=generator)
    if torch.equal(order, torch.arange(flat.numel())):  # a shuffle that moved nothing is no mutation
        order = order.roll(1)
    shuffled = flat[order]
    return {
        "shifted by one place": flat.roll(1).view(actual.shape),
        "shuffled": shuffled.view(actual.shape),
        "constant (the mean)": torch.full_like(actual.detach(), float(flat.double().mean())),
    }


def assert_matches(actual: Tensor, expected: Tensor, tolerance: Tolerance, *, what: str = "result",
                   scale: float | None = None, min_spread: float = 100.0) -> None:
    """``actual`` equals ``expected`` within ``tolerance``, and the comparison can tell a wrong answer.

    ``scale`` replaces the reference's largest magnitude as the size the rounding is relative to, where
    that is another number (a metric normalised by a small gap carries the rounding of what it divides).
    ``min_spread``: how many tolerances the reference must vary by (100; lower only where the dtype's
    rounding makes that impossible on any model small enough to test, with the reason at the call).

    Raises:
        AssertionError: the values differ; or ``expected`` barely varies (a vacuous comparison); or a
            shifted, shuffled or constant version of ``actual`` would pass as well.
    """
    actual, expected = actual.detach().float().cpu(), expected.detach().float().cpu()
    atol = tolerance.atol(expected, scale)
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    gap = float((actual - expected).abs().max())
    assert gap <= atol, f"{what}: differs from the reference by {gap:.3g} > {atol:.3g} ({tolerance.reason})"
    spread = float(expected.max() - expected.min())
    assert spread > min_spread * atol, (
        f"{what}: a vacuous comparison: the reference varies by only {spread:.3g}, not far above the "
        f"tolerance {atol:.3g}; use a model or task with larger effects")
    for name, mutant in mutations(actual).items():
        assert not _close(mutant, expected, atol), f"{what}: the comparison would pass a {name} result"


def assert_scalar_matches(actual: float, expected: float, tolerance: Tolerance, *, baseline: float,
                          what: str = "value") -> None:
    """``actual`` equals ``expected`` within ``tolerance`` (on the scale of the larger of the two values),
    and ``baseline`` (what a wrong implementation would plausibly give, e.g. the value before the
    intervention) is far outside it."""
    atol = tolerance.atol(torch.tensor([expected, baseline]))
    assert abs(actual - expected) <= atol, (
        f"{what}: {actual:.6g} differs from the reference {expected:.6g} by more than {atol:.3g} ({tolerance.reason})")
    assert abs(baseline - expected) > 100 * atol, (
        f"{what}: a vacuous comparison: the baseline {baseline:.6g} is within {100 * atol:.3g} of the reference")


def fast_engine(model: Any, prompts: PromptSet, **options: Any) -> PatchingEngine:
    """A patching engine that must take its fast path. Any warning fails (a fallback announces itself
    with one), so a comparison of the engine with a reference can never silently compare the reference
    with itself."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        engine = PatchingEngine(model, prompts, progress=False, **options)
    assert engine.uses_fast_path, engine.fast_path_reason
    return engine


def run_dir(notebooks: Path | str, task: str, model: Path | str) -> Path:
    """The folder ``make run TASK=<task> MODEL=<model>`` writes in ``notebooks`` (a task of params/, whose own
    model is a hub name: a toy model's run lands in ``<task>@<toy's folder name>``)."""
    from helpers.paths import run_folder_name
    from helpers.tasks.spec import load_task

    return Path(notebooks) / run_folder_name(task, str(model), load_task(task).model)
