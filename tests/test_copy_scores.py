"""Copy scores: planted copying and anti-copying heads, an independent step-by-step computation in plain
Hugging Face GPT-2 (LayerNorms with their own weights, nothing folded), and the scatter's correlation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import scipy.stats
import torch
from checks import FLOAT32_FOLDED, FLOAT32_REORDERED, assert_matches

from helpers.analyses import copy_scores
from helpers.analyses.heads import HeadScore
from helpers.models.toys import PLANTED
from helpers.tasks.metrics import pearson_correlation
from helpers.tasks.prompts import PromptSet, build_prompts, load_task

RANDOM_HEADS = [(0, 3), (1, 2), (1, 3)]  # the planted model's heads left with small random weights


@pytest.fixture(scope="module")
def planted_ioi(planted: Any) -> PromptSet:
    return build_prompts(load_task("ioi").with_overrides(n_prompts=16), planted.tokenizer)


@pytest.fixture(scope="module")
def planted_scores(planted: Any, planted_ioi: PromptSet) -> copy_scores.CopyScores:
    return copy_scores.compute_copy_scores(planted, planted_ioi, k=5)


def test_the_planted_copying_head_copies_and_the_anti_copying_head_suppresses(
    planted_scores: copy_scores.CopyScores,
) -> None:
    copy, negative = planted_scores.copy, planted_scores.negative
    assert float(copy[PLANTED.induction]) >= 0.95
    assert float(negative[PLANTED.anti_copy]) >= 0.95
    assert float(negative[PLANTED.induction]) <= 0.05 and float(copy[PLANTED.anti_copy]) <= 0.05
    assert (planted_scores.top(1)[0].layer, planted_scores.top(1)[0].head) == PLANTED.induction
    top_negative = planted_scores.top(1, negative=True)[0]
    assert (top_negative.layer, top_negative.head) == PLANTED.anti_copy
    for head in RANDOM_HEADS:
        assert float(copy[head]) <= 0.05 and float(negative[head]) <= 0.05, head
    # a head whose output is exactly zero ties every token: ties count against the token
    assert float(copy[PLANTED.silent]) == 0.0 and float(negative[PLANTED.silent]) == 0.0


def test_every_role_is_an_input_and_scores_split_by_role(planted_scores: copy_scores.CopyScores) -> None:
    inputs = planted_scores.inputs
    assert len(inputs) == 16 * 5  # IO, S twice, PLACE, OBJECT in every IOI template
    assert {role: inputs.roles.count(role) for role in dict.fromkeys(inputs.roles)} == {
        "IO": 16, "S": 32, "PLACE": 16, "OBJECT": 16}
    by_role = planted_scores.by_role()
    assert set(by_role) == {"IO", "S", "PLACE", "OBJECT"}
    weighted = sum(by_role[role] * inputs.roles.count(role) for role in by_role) / len(inputs)
    torch.testing.assert_close(weighted, planted_scores.copy)


def test_heads_with_random_weights_score_low(toy_model: Any, ioi_prompts: PromptSet) -> None:
    scores = copy_scores.compute_copy_scores(toy_model, ioi_prompts, k=5)
    assert float(scores.copy.max()) <= 0.1 and float(scores.negative.max()) <= 0.1


def _step_by_step_ov_logits(hf: Any, hidden: torch.Tensor, layer: int, head: int, sign: float) -> torch.Tensor:
    """One input's OV logits with the unfolded GPT-2 modules: ln_1 without its bias, the value slice of
    c_attn without its bias (both are constants the head writes whatever it attends to; the copy score
    leaves them out), the head's rows of c_proj, ln_f and the (bias-free) lm_head."""
    block = hf.transformer.h[layer]
    d_model = hf.config.n_embd
    d_head = d_model // hf.config.n_head
    cols = slice(2 * d_model + head * d_head, 2 * d_model + (head + 1) * d_head)
    value = (block.ln_1(hidden) - block.ln_1.bias) @ block.attn.c_attn.weight[:, cols]
    out = sign * (value @ block.attn.c_proj.weight[head * d_head : (head + 1) * d_head])
    return hf.lm_head(hf.transformer.ln_f(out))


@pytest.mark.parametrize("layer, head", [(1, 2), (0, 1)])
def test_one_head_matches_a_step_by_step_computation_in_plain_gpt2(
    layer: int, head: int, toy_model: Any, toy_model_dir: Path, ioi_prompts: PromptSet
) -> None:
    """The toy model has random LayerNorm weights and biases, which compatibility mode folds into W_V,
    b_V and b_U: the unfolded computation must give the same logits up to a constant per row
    (the centred unembedding) and therefore the same top tokens."""
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(toy_model_dir).eval()
    k = 5
    scores = copy_scores.compute_copy_scores(toy_model, ioi_prompts, k=k)
    inputs = scores.inputs
    with torch.no_grad():
        hidden_states = hf(ioi_prompts.clean_tokens, output_hidden_states=True).hidden_states[1]  # after block 0
        ours = copy_scores.ov_logits(toy_model, copy_scores.ov_outputs(
            toy_model, copy_scores.resid_after_first_layer(toy_model, ioi_prompts, inputs), [HeadScore(layer, head, 0.0)])[0])
        for sign, in_top_k, score in ((1.0, scores.in_top, scores.copy), (-1.0, scores.negative_in_top, scores.negative)):
            hits = 0
            for case in range(len(inputs)):
                hidden = hidden_states[inputs.prompt_index[case], inputs.position[case]]
                logits = _step_by_step_ov_logits(hf, hidden, layer, head, sign)
                token = int(inputs.token[case])
                in_top = token in torch.topk(logits, k).indices.tolist()
                hits += in_top
                assert bool(in_top_k[layer, head, case]) == in_top
                if sign > 0:
                    assert_matches(ours[case] - ours[case].mean(), logits - logits.mean(), FLOAT32_FOLDED,
                                   what=f"OV logits of L{layer}H{head}, input {case}")
            assert float(score[layer, head]) == pytest.approx(hits / len(inputs))


def test_successor_scores_match_a_step_by_step_computation_in_plain_gpt2(toy_model: Any, toy_model_dir: Path) -> None:
    """On the random toy, every head and every pair of months: the next month's logit is first among the
    months' exactly where the unfolded GPT-2 modules, run on the month alone after BOS, put it first."""
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(toy_model_dir).eval()
    spec = load_task("months")
    scores = copy_scores.compute_successor_scores(toy_model, spec)
    assert scores is not None and len(scores.pairs) == 12 and scores.pairs.list_name == ("M",) * 12
    months = [int(t) for t in scores.pairs.candidates]
    assert [toy_model.tokenizer.decode([t]) for t in months] == [f" {m}" for m in spec.words_for("M")]
    bos = toy_model.tokenizer.bos_token_id
    with torch.no_grad():
        hidden = hf(torch.tensor([[bos, t] for t in scores.pairs.token.tolist()]),
                    output_hidden_states=True).hidden_states[1][:, 1]  # after block 0, at the month
        for layer in range(hf.config.n_layer):
            for head in range(hf.config.n_head):
                for pair in range(len(scores.pairs)):
                    logits = _step_by_step_ov_logits(hf, hidden[pair], layer, head, 1.0)[months]
                    successor = int(scores.pairs.successor[pair])
                    first = bool((logits[successor] > logits[torch.arange(12) != successor]).all())
                    assert bool(scores.first[layer, head, pair]) == first, (layer, head, scores.pairs.words[pair])
    assert scores.first.any() and not scores.first.all()  # both outcomes occur: the comparison can fail


def test_predictions_show_what_the_planted_heads_write(planted: Any, planted_ioi: PromptSet) -> None:
    copying, anti = (HeadScore(*PLANTED.induction, 1.0), HeadScore(*PLANTED.anti_copy, 1.0))
    [copies] = copy_scores.compute_copy_predictions(planted, planted_ioi, [copying], n_inputs=4, k=3)
    [suppresses] = copy_scores.compute_copy_predictions(planted, planted_ioi, [anti], negative=True, n_inputs=4, k=3)
    [ignores] = copy_scores.compute_copy_predictions(planted, planted_ioi, [anti], n_inputs=4, k=3)
    assert len(copies.inputs) == 4 and len(set(copies.input_tokens)) == 4
    assert [top[0] for top in copies.top_tokens] == list(copies.input_tokens)
    assert [top[0] for top in suppresses.top_tokens] == list(suppresses.input_tokens)
    assert copies.copied == (True,) * 4 and not any(ignores.copied)


def test_the_scatter_correlation_matches_scipy_and_has_the_planted_sign(planted: Any, planted_ioi: PromptSet) -> None:
    heads = [HeadScore(*PLANTED.induction, 0.0), HeadScore(*PLANTED.anti_copy, 0.0)]
    copying, anti = copy_scores.compute_attention_vs_projection(planted, planted_ioi, heads)
    for result in (copying, anti):
        expected = scipy.stats.pearsonr(result.attention.double().numpy(), result.projection.double().numpy())
        assert result.pearson_r == pytest.approx(float(expected.statistic), abs=1e-9)
        assert result.p_value == pytest.approx(float(expected.pvalue), rel=1e-6, abs=1e-300)
    # one point per (prompt, distinct word): IO, S (twice, one point), PLACE, OBJECT
    assert len(anti.roles) == 16 * 4 and anti.roles.count("S") == 16
    # the anti-copying head lowers a word's logit the more it attends to it
    assert anti.pearson_r < -0.5 and anti.p_value < 1e-3
    assert copying.pearson_r > 0


def test_the_scatter_points_are_the_attention_and_output_the_model_computes(planted: Any, planted_ioi: PromptSet) -> None:
    layer, head = PLANTED.anti_copy
    [result] = copy_scores.compute_attention_vs_projection(planted, planted_ioi, [HeadScore(layer, head, 0.0)])
    _, cache = planted.run_with_cache(planted_ioi.clean_tokens)
    attention, projection = [], []
    for b, words in enumerate(planted_ioi.word_positions):
        final = int(planted_ioi.final_pos[b])
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"][b, head, final]
        head_out = cache[f"blocks.{layer}.attn.hook_z"][b, final, head] @ planted.W_O[layer, head]
        for token in dict.fromkeys(w.token for w in words):
            positions = [w.position for w in words if w.token == token]
            attention.append(float(pattern[positions].sum()))
            projection.append(float(head_out @ planted.W_U[:, token]))
    assert len(attention) == len(result.roles)
    assert_matches(result.attention, torch.tensor(attention), FLOAT32_REORDERED, what="the scatter's attention")
    assert_matches(result.projection, torch.tensor(projection), FLOAT32_REORDERED, what="the scatter's projection")


def test_pearson_edge_cases() -> None:
    r, p = pearson_correlation(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 2.0, 2.0]))
    assert r != r and p != p  # NaN: a constant variable has no correlation
    r, p = pearson_correlation(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([3.0, 1.0, -1.0]))
    assert r == pytest.approx(-1.0) and p < 1e-6


def test_a_task_without_words_of_interest_is_refused(toy_model: Any) -> None:
    spec = load_task({"name": "plain", "description": "d", "model": "x", "prompts": [
        {"clean": "The cat sat on the", "corrupted": "The dog sat on the", "correct": " mat", "incorrect": " rug"}]})
    prompts = build_prompts(spec, toy_model.tokenizer)
    with pytest.raises(ValueError, match="no words of interest"):
        copy_scores.compute_copy_scores(toy_model, prompts)
    with pytest.raises(ValueError, match="k=0"):
        copy_scores.compute_copy_scores(toy_model, prompts, k=0)
