"""Direct logit attribution, checked against computations that share none of its code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jaxtyping
import pytest
import torch
from checks import FLOAT32_FOLDED, FLOAT32_FORWARD, FLOAT32_REORDERED, assert_matches
from reference import gpt2_head_dla

from helpers.analyses import dla as attribution
from helpers.analyses.heads import HeadScore, rank_heads
from helpers.models.hooks import HookNotFoundError, cache_activations, checked_hooks, run_with_checked_cache
from helpers.tasks.metrics import AnswerMetric, at_final_pos, pearson_correlation
from helpers.tasks.prompts import PromptSet


@pytest.fixture(scope="module")
def cache(toy_model: Any, ioi_prompts: PromptSet) -> attribution.FinalPositionCache:
    return attribution.run_final_position_cache(toy_model, ioi_prompts)


@pytest.fixture(scope="module")
def hf_reference(toy_model_dir: Path, ioi_prompts: PromptSet) -> dict[str, Any]:
    """A plain transformers forward pass on the saved (unfolded) model, recording each head's output."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(toy_model_dir, attn_implementation="eager").eval()
    merged_heads: dict[int, torch.Tensor] = {}
    handles = [
        block.attn.c_proj.register_forward_pre_hook(
            lambda _module, args, layer=layer: merged_heads.__setitem__(layer, args[0].detach()))
        for layer, block in enumerate(model.transformer.h)
    ]
    with torch.no_grad():
        out = model(ioi_prompts.clean_tokens, output_hidden_states=True)
    for handle in handles:
        handle.remove()
    return {"model": model, "logits": out.logits, "final_resid": out.hidden_states[-1], "merged_heads": merged_heads}


def test_logit_diff_by_hand() -> None:
    logits = torch.zeros(2, 3, 5)
    logits[0, 1, 2], logits[0, 1, 4] = 3.0, 1.0  # prompt 0 ends at position 1
    logits[1, 2, 0], logits[1, 2, 3] = -1.0, 2.0  # prompt 1 ends at position 2
    answers = torch.tensor([[2, 4], [0, 3]])
    final_pos = torch.tensor([1, 2])
    final = at_final_pos(logits, final_pos)
    assert final.shape == (2, 5)
    torch.testing.assert_close(AnswerMetric.from_pairs(answers).logit_diff(final), torch.tensor([2.0, -3.0]))


def test_shape_annotations_are_enforced_in_tests() -> None:
    """The suite runs with jaxtyping's runtime checks: a wrong shape fails at the call. The call chosen
    is one torch itself accepts (it broadcasts a 1-element tensor and returns NaN), so only the
    annotation's check can raise here."""
    with pytest.raises(jaxtyping.TypeCheckError):
        pearson_correlation(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0]))


def test_logit_diff_matches_a_transformers_forward_pass(cache: Any, ioi_prompts: PromptSet, hf_reference: Any) -> None:
    final = hf_reference["logits"][torch.arange(len(ioi_prompts)), ioi_prompts.final_pos]
    expected = final.gather(1, ioi_prompts.answer_tokens[:, :1])[:, 0] - final.gather(1, ioi_prompts.answer_tokens[:, 1:])[:, 0]
    assert_matches(cache.logit_diff, expected, FLOAT32_FOLDED, what="logit difference")


def test_padding_does_not_change_a_prompt(toy_model: Any, ioi_prompts: PromptSet, cache: Any) -> None:
    """Prompts are right-padded in a batch; each must give what it gives alone."""
    lengths = ioi_prompts.final_pos + 1
    i = int(torch.argmin(lengths))
    assert lengths[i] < ioi_prompts.clean_tokens.shape[1], "the fixture needs prompts of different lengths"
    alone = toy_model(ioi_prompts.clean_tokens[i : i + 1, : int(lengths[i])])[0, -1]
    padded = toy_model(ioi_prompts.clean_tokens[i : i + 1])[0, int(lengths[i]) - 1]
    # the whole final-position logits, not only the logit difference
    assert_matches(padded, alone, FLOAT32_FORWARD, what="a padded prompt's final logits")


def test_component_attributions_add_up_to_the_logit_diff(cache: Any) -> None:
    components = attribution.compute_component_attribution(cache)
    assert components.labels[:2] == ("embed", "pos_embed") and components.labels[-1] == "unembed bias"
    assert len(components.labels) == 2 + 2 * 2 + 1
    assert_matches(components.per_prompt.sum(0), cache.logit_diff, FLOAT32_REORDERED, what="sum of the attributions")
    # the unembedding bias is not negligible here: leaving it out would break the sum
    assert cache.logit_diff_bias.abs().max() > 1e-3


def test_component_attribution_matches_unfolded_layernorm(cache: Any, ioi_prompts: PromptSet, hf_reference: Any) -> None:
    """Independent route: the raw model's final LayerNorm (weight and bias unfolded) and unembedding."""
    model = hf_reference["model"]
    ln = model.transformer.ln_f
    resid = hf_reference["final_resid"]  # GPT-2's hidden_states[-1] is after ln_f
    final_resid = resid[torch.arange(len(ioi_prompts)), ioi_prompts.final_pos]
    w_u = model.lm_head.weight  # [d_vocab, d_model]
    direction = w_u[ioi_prompts.answer_tokens[:, 0]] - w_u[ioi_prompts.answer_tokens[:, 1]]
    expected = (final_resid * direction).sum(-1)
    components = attribution.compute_component_attribution(cache)
    assert_matches(components.per_prompt.sum(0), expected, FLOAT32_FOLDED, what="attributions against unfolded LayerNorm")
    assert ln.bias.abs().max() > 0  # the fixture's LayerNorm is not the identity


def test_head_attribution_matches_a_hand_computation_on_the_raw_model(
    toy_model: Any, cache: Any, ioi_prompts: PromptSet, hf_reference: Any
) -> None:
    """Each head's output from transformers' own tensors, through the unfolded final LayerNorm (see
    :func:`reference.gpt2_head_dla` for the value bias)."""
    heads = attribution.compute_head_attribution(toy_model, cache)
    assert_matches(heads.per_prompt, gpt2_head_dla(hf_reference["model"], ioi_prompts), FLOAT32_FOLDED,
                   what="per-head attribution")


def test_logit_lens_ends_at_the_logit_diff_and_starts_at_the_embeddings(toy_model: Any, cache: Any) -> None:
    lens = attribution.compute_logit_lens(cache)
    assert lens.labels[0] == "embeddings" and lens.labels[-1] == "L1 mlp" and len(lens.labels) == 5
    assert_matches(lens.per_prompt[-1], cache.logit_diff, FLOAT32_REORDERED, what="the logit lens's last point")
    # the first point: the embeddings alone through a freshly computed LayerNorm, by hand
    x = cache.embed + cache.pos_embed
    x = x - x.mean(-1, keepdim=True)
    by_hand = (x / (x.pow(2).mean(-1, keepdim=True) + toy_model.cfg.eps).sqrt() * cache.logit_diff_direction).sum(-1)
    assert_matches(lens.per_prompt[0], by_hand + cache.logit_diff_bias, FLOAT32_REORDERED, what="the lens's first point")


def test_additivity_check_passes_and_catches_a_broken_sum(toy_model: Any, cache: Any) -> None:
    components = attribution.compute_component_attribution(cache)
    lens = attribution.compute_logit_lens(cache)
    check = attribution.check_additivity(toy_model, cache, components, lens)
    assert check.ok, check.to_dict()
    check.raise_if_failed()
    without_bias = attribution.ComponentAttribution(components.labels[:-1], components.per_prompt[:-1], components.logit_diff)
    broken = attribution.check_additivity(toy_model, cache, without_bias, lens)
    assert not broken.ok
    with pytest.raises(AssertionError, match="does not add up"):
        broken.raise_if_failed()


def test_top_heads_and_ranking() -> None:
    scores = torch.tensor([[0.1, -2.0, 0.3], [1.5, 0.0, -0.4]])
    top = rank_heads(scores, 2)
    assert [(h.layer, h.head) for h in top] == [(1, 0), (0, 2)]
    assert [h.value for h in top] == pytest.approx([1.5, 0.3])
    assert [h.name for h in rank_heads(scores, 2, largest=False)] == ["L0H1", "L1H2"]
    heads = attribution.HeadAttribution(scores[..., None])
    positive, negative = heads.top(1)
    assert positive[0].name == "L1H0" and negative[0].name == "L0H1"


def test_ties_rank_in_layer_then_head_order_whatever_k() -> None:
    scores = torch.zeros(3, 4)
    scores[2, 1] = 1.0
    names = [h.name for h in rank_heads(scores, 12)]
    assert names[:4] == ["L2H1", "L0H0", "L0H1", "L0H2"]
    for k in range(1, 13):
        assert [h.name for h in rank_heads(scores, k)] == names[:k]
    assert len(rank_heads(scores, 50)) == 12


def test_top_predictions_rank_the_answers(cache: Any, ioi_prompts: PromptSet, toy_model: Any) -> None:
    top = attribution.compute_top_predictions(cache, ioi_prompts, toy_model.tokenizer, k=5)
    probs = cache.final_logits[0].softmax(-1)
    correct = int(ioi_prompts.answer_tokens[0, 0])
    assert top.correct_rank == int((probs > probs[correct]).sum()) + 1
    assert len(top.tokens) == 5 and list(top.probs) == sorted(top.probs, reverse=True)
    assert top.tokens[0] == toy_model.tokenizer.decode([int(probs.argmax())])


def test_attention_patterns_are_the_models_own(toy_model: Any, ioi_prompts: PromptSet, hf_reference: Any) -> None:
    """Independent route: plain transformers' attention weights (eager attention) on the same prompt."""
    heads = [HeadScore(1, 2, 0.0), HeadScore(0, 3, 0.0)]
    result = attribution.compute_attention_patterns(toy_model, ioi_prompts, heads, prompt_index=1)
    n = int(ioi_prompts.final_pos[1]) + 1
    assert result.patterns.shape == (2, n, n) and len(result.str_tokens) == n
    with torch.no_grad():
        attentions = hf_reference["model"](ioi_prompts.clean_tokens[1:2, :n], output_attentions=True).attentions
    expected = torch.stack([attentions[h.layer][0, h.head] for h in heads])
    assert_matches(result.patterns, expected, FLOAT32_FORWARD, what="attention patterns")
    assert torch.triu(result.patterns, diagonal=1).abs().max() == 0  # causal


def test_a_misspelled_hook_fails_loudly(toy_model: Any, ioi_prompts: PromptSet) -> None:
    with pytest.raises(HookNotFoundError, match="blocks.0.attn.hook_attn' is not a hook point.*hook_pattern"):
        cache_activations(toy_model, ioi_prompts.clean_tokens[:1], ["blocks.0.attn.hook_attn"])


def test_the_hooks_that_patch_are_checked_as_the_hooks_that_read(toy_model: Any, ioi_prompts: PromptSet) -> None:
    """What the hooks path of patching uses (helpers/analyses/patching/through_hooks.py): a misspelt name is
    refused before the run, a hook that did not fire is an error after it, and checked hooks compute the same."""
    tokens = ioi_prompts.clean_tokens[:2]

    def double(act: Tensor, hook: Any) -> Tensor:
        return act * 2

    with pytest.raises(HookNotFoundError, match="hook_attn' is not a hook point.*hook_pattern"):
        with checked_hooks(toy_model, [("blocks.0.attn.hook_attn", double)]):
            pass
    with pytest.raises(HookNotFoundError, match=r"\['blocks.1.hook_resid_pre'\] exist but did not fire"):
        with checked_hooks(toy_model, [("blocks.1.hook_resid_pre", double)]):
            pass  # no forward pass: the hook never fires
    plain = toy_model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.hook_resid_pre", double)])
    with checked_hooks(toy_model, [("blocks.1.hook_resid_pre", double)]) as hooks:
        checked = toy_model.run_with_hooks(tokens, fwd_hooks=hooks)
    assert torch.equal(plain, checked)
    with pytest.raises(HookNotFoundError, match="is not a hook point"):
        run_with_checked_cache(toy_model, tokens, ["blocks.0.hook_resid_pree"])
    logits, acts = run_with_checked_cache(toy_model, tokens, ["blocks.0.hook_resid_pre"])
    assert torch.equal(logits, toy_model(tokens)) and set(acts) == {"blocks.0.hook_resid_pre"}
