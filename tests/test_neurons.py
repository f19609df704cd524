"""MLP neurons: neuron patching against explicit hooks on the model, attribution against gradients taken
through the model, and a planted neuron that alone carries the answer."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from checks import FLOAT32_GRADIENT, FLOAT32_PATCHING, assert_matches, fast_engine
from reference import hook_neuron_patching

from helpers.analyses import neurons
from helpers.analyses.patching.engine import PatchingEngine, PatchingResult
from helpers.models.load import load_model
from helpers.models.toys import PLANTED_NEURON, build_planted_neuron_model
from helpers.tasks.metrics import at_final_pos
from helpers.tasks.prompts import PromptSet, build_prompts, parse_task


@pytest.fixture(scope="module")
def engine(toy_model: Any, ioi_prompts: PromptSet) -> PatchingEngine:
    return fast_engine(toy_model, ioi_prompts)


@pytest.mark.parametrize("layer", [0, 1])
def test_neuron_patching_equals_an_explicit_hook_on_the_model(
    layer: int, engine: PatchingEngine, toy_model: Any, ioi_prompts: PromptSet
) -> None:
    """The 16 strongest neurons and 16 others (seeded), each patched by a hook on the model's own
    ``hook_post`` (:func:`reference.hook_neuron_patching`)."""
    values = engine.patch_neurons(layer)
    d_mlp = toy_model.cfg.d_mlp
    assert values.shape == (d_mlp,)
    strongest = (values - engine.corrupted_metric).abs().argsort(descending=True)[:16]
    others = torch.randperm(d_mlp, generator=torch.Generator().manual_seed(layer))
    neurons = torch.cat([strongest, others[~torch.isin(others, strongest)][:16]])
    expected = hook_neuron_patching(toy_model, ioi_prompts, layer, neurons, engine.metric)
    assert_matches(values[neurons], expected, FLOAT32_PATCHING, what=f"L{layer} neuron patching")


def test_neuron_attribution_equals_gradients_taken_through_the_model(
    engine: PatchingEngine, toy_model: Any, ioi_prompts: PromptSet
) -> None:
    estimate = engine.neuron_attribution()
    stored: dict[str, torch.Tensor] = {}

    def keep(act: torch.Tensor, hook: Any) -> torch.Tensor:
        act = act.clone()  # a fresh tensor puts the hook point on the gradient's path
        act.retain_grad()
        stored[hook.name] = act
        return act

    def start_graph(act: torch.Tensor, hook: Any) -> torch.Tensor:
        return act.detach().requires_grad_(True)

    hooks = [("hook_embed", start_graph)] + [(f"blocks.{layer}.mlp.hook_post", keep) for layer in range(2)]
    with torch.enable_grad():
        logits = toy_model.run_with_hooks(ioi_prompts.corrupted_tokens, fwd_hooks=hooks)
        engine.metric(at_final_pos(logits, ioi_prompts.final_pos)).backward()
    _, clean = toy_model.run_with_cache(ioi_prompts.clean_tokens)
    for layer in range(2):
        key = f"blocks.{layer}.mlp.hook_post"
        change = at_final_pos(clean[key] - stored[key].detach(), ioi_prompts.final_pos)
        expected = (change * at_final_pos(stored[key].grad, ioi_prompts.final_pos)).sum(dim=0)
        assert_matches(estimate[layer] - engine.corrupted_metric, expected, FLOAT32_GRADIENT,
                       what=f"L{layer} neuron attribution")


@pytest.fixture(scope="module")
def mood(tmp_path_factory: pytest.TempPathFactory, gpt2_tokenizer: Any) -> tuple[Any, PromptSet]:
    model = load_model(str(build_planted_neuron_model(tmp_path_factory.mktemp("neuron"), tokenizer=gpt2_tokenizer)),
                       device="cpu")
    on, off = PLANTED_NEURON.trigger
    yes, no = PLANTED_NEURON.answers
    starts = ["Today I feel", "She said she was", "They were all very", "He did not look", "We are"]
    task = {"name": "mood", "description": "the planted neuron's task", "model": "x", "prompts": [
        {"clean": s + on, "corrupted": s + off, "correct": yes, "incorrect": no} for s in starts]}
    return model, build_prompts(parse_task(task, source="mood.yaml"), model.tokenizer)


def test_the_planted_neuron_alone_carries_the_answer(mood: tuple[Any, PromptSet]) -> None:
    model, prompts = mood
    engine = fast_engine(model, prompts)
    assert engine.task_metric.clean > 1.0 > engine.task_metric.corrupted
    result = neurons.compute_neuron_patching(engine, PLANTED_NEURON.layer)
    n = PLANTED_NEURON.neuron
    assert result.top(1) == [n] and float(result.effect[n]) > 0.95
    others = torch.cat([result.effect[:n], result.effect[n + 1 :]])
    assert float(others.abs().max()) < 0.1
    assert float(result.estimated_effect[n]) > 0  # the attribution screen agrees in sign
    assert int(result.estimated_effect.abs().argmax()) == n

    [writes] = neurons.compute_neuron_writes(model, prompts, result, [n], k=3)
    assert writes.promoted[0][0] == PLANTED_NEURON.answers[0] and writes.suppressed[0][0] == PLANTED_NEURON.answers[1]
    assert writes.direct_logit_diff > 0 and writes.name == f"L{PLANTED_NEURON.layer}N{n}"
    activations = neurons.compute_neuron_activations(model, prompts, PLANTED_NEURON.layer, [n])
    assert (activations.clean > 1.0).all() and (activations.corrupted.abs() < 0.1).all()


def test_the_default_layer_is_the_largest_mlp_effect_at_the_final_position() -> None:
    values = torch.tensor([[0.0, 0.1, 0.2], [0.0, 0.9, -0.4], [0.0, 0.0, 0.3]])
    mlp_map = PatchingResult("mlp_out", values, ("0", "1", "2"), "metric")
    assert neurons.choose_mlp_layer(mlp_map, final_position=2, corrupted_metric=0.0) == 1  # |-0.4| is largest
    assert neurons.choose_mlp_layer(mlp_map, final_position=1, corrupted_metric=0.0) == 1
    assert neurons.choose_mlp_layer(mlp_map, final_position=2, corrupted_metric=0.3) == 1


def test_a_layer_outside_the_model_is_named(engine: PatchingEngine) -> None:
    with pytest.raises(ValueError, match="layers 0-1"):
        engine.patch_neurons(2)
