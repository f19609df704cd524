"""Vector arithmetic: extraction against plain transformers GPT-2, scale 0 changes nothing, and a planted
vector that writes the answer beats norm-matched random vectors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from checks import FLOAT32_FOLDED, assert_matches

from helpers.analyses import vectors
from helpers.analyses.dla import ComponentAttribution, run_final_position_cache
from helpers.tasks.prompts import PromptSet


@pytest.fixture(scope="module")
def mary_targets(toy_model: Any, ioi_prompts: PromptSet) -> vectors.Targets:
    return vectors.target_prompts([{"prompt": text, "answer": " Mary"} for text in ioi_prompts.clean_prompts[:8]],
                                  ioi_prompts, toy_model)


def test_scale_zero_changes_nothing(toy_model: Any, ioi_prompts: PromptSet) -> None:
    vector = vectors.extract_update_vector(run_final_position_cache(toy_model, ioi_prompts), component="mlp", layer=0)
    targets = vectors.target_prompts("corrupted", ioi_prompts, toy_model)
    before = vectors.run_with_vector(toy_model, targets, None, layers=[0])
    zero = vectors.run_with_vector(toy_model, targets, vector, layers=[0, 1], scale=0.0)
    assert torch.equal(zero.final_logits, before.final_logits) and torch.equal(zero.lens_probs, before.lens_probs)
    assert vector.norm > 0


def test_a_planted_vector_writing_the_answer_wins_and_random_vectors_of_its_norm_do_not(
    toy_model: Any, mary_targets: vectors.Targets
) -> None:
    mary = int(mary_targets.answers[0])
    direction = toy_model.W_U[:, mary].float()
    planted = vectors.UpdateVector(50 * direction / direction.norm(), "the answer's unembedding direction")
    result = vectors.compute_vector_arithmetic(toy_model, mary_targets, planted, layers=[1], n_random=5)
    assert result.before.top_share == 0.0
    assert result.after.top_share == 1.0
    assert result.random_top_share <= 0.2 and len(result.random) == 5
    randoms = [vectors.random_like(planted, seed) for seed in range(3)]
    assert all(r.norm == pytest.approx(50.0, rel=1e-5) for r in randoms)
    assert not torch.equal(randoms[0].vector, randoms[1].vector)
    assert torch.equal(randoms[0].vector, vectors.random_like(planted, 0).vector)  # seeded


def test_the_vector_changes_the_stream_only_after_the_layer_it_is_added_at(
    planted: Any, ioi_prompts: PromptSet
) -> None:
    targets = vectors.target_prompts([{"prompt": t, "answer": " Mary"} for t in ioi_prompts.clean_prompts[:4]],
                                     ioi_prompts, planted)
    direction = planted.W_U[:, int(targets.answers[0])].float()
    vector = vectors.UpdateVector(20 * direction / direction.norm(), "planted")
    before = vectors.run_with_vector(planted, targets, None, layers=[1])
    after = vectors.run_with_vector(planted, targets, vector, layers=[1])
    assert torch.equal(after.lens_probs[0], before.lens_probs[0])  # after layer 0: not added yet
    assert (after.lens_probs[1] > before.lens_probs[1]).all()  # after layer 1, where it was added


@pytest.mark.parametrize("component", ["mlp", "attn"])
def test_the_update_vector_is_the_mean_component_output_of_plain_gpt2(
    component: str, toy_model: Any, toy_model_dir: Path, ioi_prompts: PromptSet
) -> None:
    """Compatibility mode centres the weights that write to the residual stream, so each output equals
    plain GPT-2's minus its mean over d_model (which every LayerNorm removes anyway)."""
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(toy_model_dir).eval()
    captured: list[torch.Tensor] = []
    module = hf.transformer.h[1].mlp if component == "mlp" else hf.transformer.h[1].attn
    handle = module.register_forward_hook(lambda m, args, out: captured.append(out[0] if isinstance(out, tuple) else out))
    with torch.no_grad():
        hf(ioi_prompts.clean_tokens)
    handle.remove()
    rows = torch.arange(len(ioi_prompts))
    outputs = captured[0][rows, ioi_prompts.final_pos]
    expected = (outputs - outputs.mean(dim=-1, keepdim=True)).mean(dim=0)
    vector = vectors.extract_update_vector(run_final_position_cache(toy_model, ioi_prompts), component=component, layer=1)
    assert_matches(vector.vector, expected, FLOAT32_FOLDED, what=f"the {component} update vector")


def test_the_default_layer_is_the_largest_direct_attribution() -> None:
    labels = ("embed", "pos_embed", "L0 attn", "L0 mlp", "L1 attn", "L1 mlp", "L2 attn", "L2 mlp", "unembed bias")
    values = torch.tensor([0.5, 0.1, 0.2, -3.0, 0.9, 0.4, 0.1, 0.6, 0.0])[:, None]
    components = ComponentAttribution(labels, values, values.sum(dim=0))
    assert vectors.default_layer(components, "mlp") == 2
    assert vectors.default_layer(components, "attn") == 1


@pytest.mark.parametrize("targets, message", [
    ([{"prompt": "When Tom and Sid went out, Sid gave it to"}], "exactly a 'prompt' and an 'answer'"),
    ([{"prompt": "When Tom went out, he gave it to", "answer": " Xanthippe"}], r"is 4 tokens \[.*\] after its prompt. Fix: use a single token"),
    ("clean", "use \"corrupted\" or a list"),
])
def test_bad_targets_are_named_with_their_fix(targets: Any, message: str, toy_model: Any, ioi_prompts: PromptSet) -> None:
    with pytest.raises(ValueError, match=message):
        vectors.target_prompts(targets, ioi_prompts, toy_model)


def test_bad_component_or_layer_is_named(toy_model: Any, ioi_prompts: PromptSet) -> None:
    cache = run_final_position_cache(toy_model, ioi_prompts)
    with pytest.raises(ValueError, match="component = 'resid'"):
        vectors.extract_update_vector(cache, component="resid", layer=0)
    with pytest.raises(ValueError, match="layers 0-1"):
        vectors.extract_update_vector(cache, component="mlp", layer=2)
