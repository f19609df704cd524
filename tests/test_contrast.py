"""The clean/corrupted contrast every engine starts from (helpers/analyses/contrast.py)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
import torch

from helpers.analyses.circuits.graph_runner import GraphRunner
from helpers.analyses.contrast import SMALL_GAP, Contrast
from helpers.analyses.patching import PatchingEngine
from helpers.tasks.prompts import PromptSet, build_prompts, load_task


def test_the_first_difference_is_the_first_column_any_prompt_changes(ioi_prompts: PromptSet) -> None:
    clean = torch.tensor([[5, 6, 7, 8], [5, 6, 7, 8]])
    corrupted = clean.clone()
    corrupted[1, 2] = 9  # one prompt changes at position 2
    two = ioi_prompts.select([0, 1])
    contrast = Contrast.on(replace(two, clean_tokens=clean, corrupted_tokens=corrupted), "cpu")
    assert contrast.first_difference == 2
    same = Contrast.on(replace(two, clean_tokens=clean, corrupted_tokens=clean), "cpu")
    assert same.first_difference == 4  # the width: nothing differs
    with pytest.raises(ValueError, match="identical: there is nothing to patch. Fix: give the task a corruption"):
        same.require_difference()
    contrast.require_difference()  # differs: no error


def test_the_small_gap_follows_the_task_metric(toy_model: Any, ioi_prompts: PromptSet) -> None:
    assert Contrast.on(ioi_prompts, "cpu").small_gap == SMALL_GAP["logit_diff"] == 0.1
    greater_than = build_prompts(load_task("greater_than").with_overrides(n_prompts=4), toy_model.tokenizer)
    assert greater_than.metric.kind == "prob_diff"
    assert Contrast.on(greater_than, "cpu").small_gap == SMALL_GAP["prob_diff"] == 0.01


def test_every_engine_reads_the_same_contrast(toy_model: Any, ioi_prompts: PromptSet) -> None:
    """The patching engine and the graph runner put the same prompts on the device and start patching at the
    same position, computed in one place."""
    engine = PatchingEngine(toy_model, ioi_prompts, progress=False)
    runner = GraphRunner(toy_model, ioi_prompts)
    expected = int((ioi_prompts.clean_tokens != ioi_prompts.corrupted_tokens).any(dim=0).nonzero()[0])
    assert engine.contrast.first_difference == runner.first_difference == expected
    for name in ("clean_tokens", "corrupted_tokens", "final_pos"):
        assert torch.equal(getattr(engine.contrast, name), getattr(runner.contrast, name)), name
    assert engine.anchors().small_gap == runner.contrast.small_gap
