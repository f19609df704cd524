"""The comparison every test relies on fails where it should: on a wrong value, on a reference too flat
to tell right from wrong, and on a wrong result that happens to sit close to it."""

from __future__ import annotations

import pytest
import torch
from checks import FLOAT32_FORWARD, FLOAT32_PATCHING, assert_matches, assert_scalar_matches, mutations

REFERENCE = torch.tensor([[0.10, -0.40, 0.90], [0.05, 0.60, -0.20]])


def test_a_match_within_the_tolerance_passes() -> None:
    assert_matches(REFERENCE + 2e-6, REFERENCE, FLOAT32_FORWARD)


def test_a_wrong_value_fails() -> None:
    wrong = REFERENCE.clone()
    wrong[1, 2] += 1e-3
    with pytest.raises(AssertionError, match="differs from the reference by 0.001"):
        assert_matches(wrong, REFERENCE, FLOAT32_FORWARD)


@pytest.mark.parametrize("name", ["shifted by one place", "shuffled", "constant (the mean)"])
def test_every_mutation_of_a_result_fails_against_its_reference(name: str) -> None:
    mutant = mutations(REFERENCE)[name]
    assert not torch.equal(mutant, REFERENCE)
    with pytest.raises(AssertionError, match="differs from the reference"):
        assert_matches(mutant, REFERENCE, FLOAT32_FORWARD)


def test_a_reference_too_flat_to_tell_right_from_wrong_is_refused() -> None:
    """The toy model of old: patching values of -5.3e-6 varying by 3e-9 under a tolerance of 1e-6."""
    flat = -5.3e-6 + 3e-9 * torch.rand(2, 4)
    with pytest.raises(AssertionError, match="vacuous comparison"):
        assert_matches(flat, flat, FLOAT32_PATCHING)


def test_a_scalar_needs_a_baseline_far_from_it() -> None:
    assert_scalar_matches(1.0 + 1e-7, 1.0, FLOAT32_PATCHING, baseline=0.0)
    with pytest.raises(AssertionError, match="vacuous comparison"):
        assert_scalar_matches(1.0, 1.0, FLOAT32_PATCHING, baseline=1.0 + 1e-5)
    with pytest.raises(AssertionError, match="differs from the reference"):
        assert_scalar_matches(0.99, 1.0, FLOAT32_PATCHING, baseline=0.0)


def test_a_shuffle_always_moves_something() -> None:
    two = torch.tensor([1.0, 2.0])
    assert not torch.equal(mutations(two)["shuffled"], two)
