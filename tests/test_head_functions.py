"""Head roles, important heads and ablation, on a model whose heads are planted by hand."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from checks import FLOAT32_FOLDED, FLOAT32_FORWARD, FLOAT32_PATCHING, FLOAT32_REORDERED, assert_matches
from reference import gpt2_head_dla, normalised_task_metric, transformer_lens_patch
from transformer_lens.head_detector import detect_head

from helpers.analyses import dla as attribution
from helpers.analyses import head_ablation
from helpers.analyses import head_functions as head_scores
from helpers.analyses import important_heads as roles
from helpers.models.toys import PLANTED
from helpers.tasks.prompts import PromptSet, build_prompts, parse_task

ROLE_TO_PLANTED = {"previous_token": PLANTED.previous_token, "duplicate_token": PLANTED.duplicate_token,
                   "induction": PLANTED.induction}


@pytest.fixture(scope="module")
def induction_prompts(planted: Any) -> PromptSet:
    """Prompts the planted copying head answers: after "... house tree ... house" comes " tree"."""
    data = {"name": "induction", "description": "d", "model": "x", "prompts": [
        {"clean": "cat dog house tree cat dog house", "corrupted": "cat dog house river cat dog house",
         "correct": " tree", "incorrect": " river"},
        {"clean": "sun moon star lake sun moon star", "corrupted": "sun moon star hill sun moon star",
         "correct": " lake", "incorrect": " hill"},
    ]}
    return build_prompts(parse_task(data, source="induction.yaml"), planted.tokenizer)


@pytest.mark.parametrize("role", head_scores.ROLES)
def test_each_score_ranks_its_planted_head_first_by_a_clear_margin(role: str, planted: Any) -> None:
    scores = head_scores.compute_head_role_scores(planted, seq_len=15, batch=8)
    first, second = scores.top(role, 2)  # type: ignore[arg-type]
    assert (first.layer, first.head) == ROLE_TO_PLANTED[role]
    assert first.value > 0.9 and second.value < 0.3, (first, second)


def test_random_weights_give_no_head_a_high_score(toy_model: Any) -> None:
    scores = head_scores.compute_head_role_scores(toy_model, seq_len=20, batch=8)
    for role in head_scores.ROLES:
        assert float(scores.scores[role].max()) < 0.3, role


def test_our_scores_agree_with_transformer_lens_head_detector(planted: Any) -> None:
    words = " cat dog house tree river stone cloud apple green music paper window garden silver bottle"
    tokens = planted.to_tokens(words * 2)
    assert tokens.shape == (1, 31)
    ours = head_scores.compute_head_role_scores(planted, tokens=tokens)
    for role, name in (("previous_token", "previous_token_head"), ("duplicate_token", "duplicate_token_head"),
                       ("induction", "induction_head")):
        theirs = detect_head(planted, words * 2, name, exclude_bos=True).float()
        assert torch.argmax(theirs) == torch.argmax(ours.scores[role])
        r = torch.corrcoef(torch.stack([theirs.flatten(), ours.scores[role].flatten()]))[0, 1]
        assert r > 0.99, (role, float(r))
    # the previous-token score counts the same attention as the detector's: the values agree too
    theirs = detect_head(planted, words * 2, "previous_token_head", exclude_bos=True).float()
    assert abs(float(theirs[PLANTED.previous_token]) - float(ours.scores["previous_token"][PLANTED.previous_token])) < 0.01


def test_scores_never_count_bos_and_sequences_are_seeded(planted: Any) -> None:
    for queries, keys in head_scores.role_targets(15).values():
        assert int(queries.min()) >= 1 and int(keys.min()) >= 1
    a = head_scores.repeated_random_tokens(planted, seq_len=15, batch=4, seed=3)
    assert torch.equal(a, head_scores.repeated_random_tokens(planted, seq_len=15, batch=4, seed=3))
    assert not torch.equal(a, head_scores.repeated_random_tokens(planted, seq_len=15, batch=4, seed=4))
    assert (a[:, 0] == planted.tokenizer.bos_token_id).all() and torch.equal(a[:, 1:16], a[:, 16:])
    assert all(len(set(row[1:16].tolist())) == 15 for row in a)
    with pytest.raises(ValueError, match="seq_len <= 15"):
        head_scores.repeated_random_tokens(planted, seq_len=16, batch=1)
    assert head_scores.compute_head_role_scores(planted).seq_len == 15  # the default fits the context


def test_ablating_the_silent_head_changes_nothing(planted: Any, induction_prompts: PromptSet) -> None:
    before = attribution.run_final_position_cache(planted, induction_prompts)
    for method in ("zero", "mean"):
        result = head_ablation.compute_head_ablation(planted, induction_prompts, before, *PLANTED.silent, method=method)
        # the head's rows of W_O are exactly zero, so whatever its z becomes it adds exactly nothing
        assert torch.equal(result.logit_diff_after, result.logit_diff_before), method
        assert torch.equal(result.dla_after, result.dla_before), method


def test_ablating_the_copying_head_changes_the_logit_diff_as_its_dla_predicts(
    planted: Any, induction_prompts: PromptSet
) -> None:
    before = attribution.run_final_position_cache(planted, induction_prompts)
    assert (before.logit_diff > 1.0).all(), "the planted copying head should answer these prompts"
    result = head_ablation.compute_head_ablation(planted, induction_prompts, before, *PLANTED.induction)
    head_dla = attribution.compute_head_attribution(planted, before).per_prompt[PLANTED.induction]
    assert (head_dla > 1.0).all()
    assert_matches(result.predicted_after, before.logit_diff - head_dla, FLOAT32_REORDERED, what="the prediction")
    # The head is in the last layer: nothing after it can react but the final LayerNorm's scale. With the
    # head's output gone from the stream, the logit difference is exactly the rest of the stream read with
    # the new scale: (before - bias - head's DLA) * (old scale / new scale) + bias.
    bias = before.logit_diff_bias
    exact = (before.logit_diff - bias - head_dla) / result.scale_ratio + bias
    assert_matches(result.logit_diff_after, exact, FLOAT32_FORWARD, what="the logit difference after the ablation")
    assert float(result.dla_after[PLANTED.induction]) == pytest.approx(0.0, abs=1e-6)
    # the head's output is a sizeable part of the final residual stream: without it the scale shrinks
    assert (result.scale_ratio < 0.99).all() and (result.scale_ratio > 0.5).all()
    assert abs(result.compensation) < 0.1


def test_important_heads_are_grouped_by_depth_fraction() -> None:
    dla = torch.zeros(12, 4)
    patching = torch.zeros(12, 4)
    dla[11, 0], dla[0, 1] = 3.0, -1.0
    patching[5, 2], patching[11, 0] = 0.8, 0.5
    importance = roles.HeadImportance(dla, patching, "test")
    heads = roles.important_heads(importance, k=2)
    assert [h.name for h in heads] == ["L5H2", "L11H0", "L0H1"]  # best rank in either list first
    assert {h.name: h.group for h in heads} == {"L0H1": "early", "L5H2": "middle", "L11H0": "late"}
    assert roles.depth_group(3, 12, (0.25, 0.75)) == "middle" and roles.depth_group(2, 12, (0.25, 0.75)) == "early"
    assert roles.depth_group(1, 2, (1 / 3, 2 / 3)) == "late"
    assert roles.top_head(importance, by="dla").name == "L11H0"
    assert roles.top_head(importance, by="patching").name == "L5H2"
    with pytest.raises(ValueError, match="depth boundaries"):
        roles.important_heads(importance, k=2, boundaries=(0.7, 0.3))


def test_importance_is_read_from_earlier_results_when_present(tmp_path: Path, toy_model: Any, toy_model_dir: Path,
                                                               ioi_prompts: PromptSet) -> None:
    from transformers import GPT2LMHeadModel

    earlier = {"dla": {"heads": {"mean": [[0.1, 0.2, 0.3, 0.4], [0.0, 0.0, 0.0, 0.5]]}},
               "patching": {"head_out": {"values": [[0.0, 0.0, 0.0, 0.0], [0.9, 0.0, 0.0, 0.0]]}}}
    clean = attribution.run_final_position_cache(toy_model, ioi_prompts)
    read = roles.compute_head_importance(toy_model, ioi_prompts, earlier, clean)
    assert read.source.startswith("earlier") and float(read.patching[1, 0]) == pytest.approx(0.9)
    computed = roles.compute_head_importance(toy_model, ioi_prompts, {}, clean)
    # independent routes: per-head DLA in plain transformers GPT-2, and transformer_lens.patching
    hf = GPT2LMHeadModel.from_pretrained(toy_model_dir).eval()
    assert_matches(computed.dla, gpt2_head_dla(hf, ioi_prompts).mean(dim=-1), FLOAT32_FOLDED, what="importance: DLA")
    expected = transformer_lens_patch(toy_model, ioi_prompts, "head_out", normalised_task_metric(toy_model, ioi_prompts))
    assert_matches(computed.patching, expected, FLOAT32_PATCHING, what="importance: output patching")
    # without a clean run to reuse, it makes its own (the same numbers, bit for bit)
    alone = roles.compute_head_importance(toy_model, ioi_prompts, {})
    assert torch.equal(alone.dla, computed.dla) and torch.equal(alone.patching, computed.patching)


def test_earlier_results_come_from_this_run_or_a_matching_last_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from helpers import paths, results
    from helpers.tasks.prompts import load_task

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "dla.results.json").write_text(json.dumps({"heads": {"mean": [[1.0]]}}))
    assert results.load_earlier_results(str(tmp_path / "run" / "head_functions.results.json"), ["dla", "patching"]) == {
        "dla": {"heads": {"mean": [[1.0]]}}}
    # by hand: the last run's results.json, only when its task settings match
    monkeypatch.setattr(paths, "NOTEBOOKS_DIR", tmp_path / "notebooks")
    spec = load_task("ioi")
    (tmp_path / "notebooks" / "ioi").mkdir(parents=True)
    last = {"templates": {"dla": {"x": 1}}, "provenance": {"task": spec.to_dict()}}
    (tmp_path / "notebooks" / "ioi" / "results.json").write_text(json.dumps(last))
    assert results.load_earlier_results(None, ["dla", "patching"], task=spec) == {"dla": {"x": 1}}
    assert results.load_earlier_results(None, ["dla"], task=spec.with_overrides(n_prompts=8)) == {}
    assert results.load_earlier_results(None, ["dla"]) == {}
