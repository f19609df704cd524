"""The patching engine equals transformer_lens.patching, variant by variant."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from checks import (
    FLOAT32_FORWARD,
    FLOAT32_GRADIENT,
    FLOAT32_PATCHING,
    assert_matches,
    assert_scalar_matches,
    fast_engine,
)
from reference import TL_FUNCTIONS, transformer_lens_patch

from helpers.analyses.contrast import SMALL_GAP
from helpers.analyses.patching import PATCH_KINDS, PER_POSITION, VARIANTS, PatchingEngine
from helpers.analyses.patching import engine as patching
from helpers.analyses.patching.variants import variant
from helpers.models.forward import ForwardPass
from helpers.tasks.metrics import METRIC_NAMES, at_final_pos
from helpers.tasks.prompts import PromptSet, build_prompts, load_task, parse_task


@pytest.fixture(scope="module")
def single_prompt(toy_model: Any) -> PromptSet:
    spec = load_task("ioi").with_overrides(n_prompts=1, seed=5)
    return build_prompts(spec, toy_model.tokenizer)


@pytest.fixture(scope="module")
def engine(toy_model: Any, ioi_prompts: PromptSet) -> PatchingEngine:
    return fast_engine(toy_model, ioi_prompts)


def test_engine_takes_the_fast_path_on_gpt2_architecture(engine: PatchingEngine, ioi_prompts: PromptSet) -> None:
    assert engine.uses_fast_path, engine.fast_path_reason
    # the fixture's prompts have different lengths, so padding is exercised
    assert len(set(ioi_prompts.final_pos.tolist())) > 1
    # the toy model's clean and corrupted runs differ by order 0.1-1 (not 1e-4), so normalising by that
    # gap magnifies no rounding error into an apparent effect
    assert abs(engine.task_metric.clean - engine.task_metric.corrupted) > 0.2


@pytest.mark.parametrize("kind", PATCH_KINDS)
def test_equals_transformer_lens(kind: str, engine: PatchingEngine, toy_model: Any, ioi_prompts: PromptSet) -> None:
    ours = engine.patch(kind)  # type: ignore[arg-type]
    reference = transformer_lens_patch(toy_model, ioi_prompts, kind, engine.metric)
    # every cell (every position of the per-position kinds, every head) is compared
    assert_matches(ours.values, reference, FLOAT32_PATCHING, what=f"{kind} patching")


@pytest.mark.parametrize("kind", PATCH_KINDS)
def test_equals_transformer_lens_on_a_single_prompt(kind: str, toy_model: Any, single_prompt: PromptSet) -> None:
    engine = fast_engine(toy_model, single_prompt, max_rows=3)  # also: chunks of 3 configs
    reference = transformer_lens_patch(toy_model, single_prompt, kind, engine.metric)
    assert_matches(engine.patch(kind).values, reference, FLOAT32_PATCHING, what=f"{kind} patching, one prompt")  # type: ignore[arg-type]


def test_normalised_metric_is_one_for_the_whole_clean_stream_and_zero_for_no_patch(engine: PatchingEngine) -> None:
    """The anchors come from the model's own logits, the patched runs from the engine's forward pass:
    they agree to float32 rounding."""
    n_pos = engine.clean_tokens.shape[1]
    assert_scalar_matches(engine.patch_resid_positions(0, list(range(n_pos))), 1.0, FLOAT32_PATCHING, baseline=0.0,
                          what="every position patched")
    assert_scalar_matches(engine.patch_resid_positions(0, []), 0.0, FLOAT32_PATCHING, baseline=1.0,
                          what="no position patched")
    assert (engine.clean_metric, engine.corrupted_metric) == (pytest.approx(1.0), pytest.approx(0.0, abs=1e-6))
    # patching every position at a later layer restores the clean run too
    assert_scalar_matches(engine.patch_resid_positions(1, list(range(n_pos))), 1.0, FLOAT32_PATCHING, baseline=0.0,
                          what="every position patched at layer 1")


def probability_mass_difference(final_logits: torch.Tensor) -> torch.Tensor:
    """Probability on a few name tokens minus probability on a few others: needs the whole vocabulary."""
    probs = final_logits.softmax(dim=-1)
    return probs[:, [5335, 1757, 4186]].sum(-1).mean() - probs[:, [3700, 6035, 7459]].sum(-1).mean()


@pytest.mark.parametrize("kind", ["resid_pre", "head_pattern"])
def test_a_metric_of_the_full_final_logits_still_equals_transformer_lens(
    kind: str, toy_model: Any, ioi_prompts: PromptSet
) -> None:
    engine = fast_engine(toy_model, ioi_prompts, metric=probability_mass_difference)
    reference = transformer_lens_patch(toy_model, ioi_prompts, kind, probability_mass_difference)
    ours = engine.patch(kind)  # type: ignore[arg-type]
    assert ours.metric_name == "probability_mass_difference"
    assert_matches(ours.values, reference, FLOAT32_FORWARD, what=f"{kind} patching, full-vocabulary metric")


def test_engine_refuses_a_forward_pass_that_does_not_reproduce_the_model(
    toy_model: Any, ioi_prompts: PromptSet, engine: PatchingEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A forward pass that is wrong (here: its MLP activation replaced) is caught by the self-check; the
    engine then patches through the model's hooks, checked against the fast path's own numbers (a
    different computation), for every analysis."""
    fast = {kind: engine.patch(kind).values for kind in ("resid_pre", "head_out", "head_pattern")}
    fast_estimates = engine.attribution_patching()
    neurons = list(range(0, toy_model.cfg.d_mlp, 8))
    fast_neurons, fast_screen = engine.patch_neurons(1, neurons), engine.neuron_attribution()
    monkeypatch.setattr(ForwardPass, "mlp_hidden", lambda self, layer, x: torch.relu(self.norm(x) @ self.w.W_in[layer]))
    with pytest.warns(UserWarning, match="runs on the model's hooks.*differs from the model's by"):
        fallback = PatchingEngine(toy_model, ioi_prompts, progress=False)
    assert not fallback.uses_fast_path and fallback.path == "model hooks"
    assert fallback.anchors().engine.startswith("model hooks (the engine's forward pass differs")
    for kind, values in fast.items():
        assert_matches(fallback.patch(kind).values, values, FLOAT32_PATCHING, what=f"the hook path's {kind} patching")  # type: ignore[arg-type]
    for kind, estimate in fallback.attribution_patching().items():
        assert_matches(estimate.values, fast_estimates[kind].values, FLOAT32_GRADIENT, what=f"the hook path's {kind} estimate")
    assert_matches(fallback.patch_neurons(1, neurons), fast_neurons, FLOAT32_PATCHING, what="the hook path's neuron patching")
    assert_matches(fallback.neuron_attribution(), fast_screen, FLOAT32_GRADIENT, what="the hook path's neuron screen")


@pytest.mark.parametrize("change, reason", [
    ("unknown activation", "activation function 'mystery_act' is not implemented by the engine"),
    ("failing forward pass", "the engine cannot run this architecture (RuntimeError: planted failure)"),
    ("unknown architecture", "the suite has no forward pass for the 'mystery' architecture"),
])
def test_each_fallback_says_why(change: str, reason: str, toy_model: Any, ioi_prompts: PromptSet,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    if change == "unknown activation":
        monkeypatch.setattr(toy_model.cfg, "act_fn", "mystery_act")
    elif change == "unknown architecture":
        monkeypatch.setattr(toy_model.original_model.config, "model_type", "mystery")
    else:
        def fail(*args: Any, **kwargs: Any) -> None:
            raise RuntimeError("planted failure")
        monkeypatch.setattr(PatchingEngine, "_forward", fail)
    with pytest.warns(UserWarning, match="runs on the model's hooks") as caught:
        fallback = PatchingEngine(toy_model, ioi_prompts, progress=False)
    assert fallback.fast_path_reason == reason and reason in str(caught[0].message)
    assert reason in fallback.anchors().engine


def test_patching_needs_eval_mode(toy_model: Any, ioi_prompts: PromptSet) -> None:
    toy_model.train()
    try:
        with pytest.raises(ValueError, match="model.eval"):
            PatchingEngine(toy_model, ioi_prompts, progress=False)
    finally:
        toy_model.eval()


def test_attribution_patching_equals_gradients_taken_through_the_model(
    engine: PatchingEngine, toy_model: Any, ioi_prompts: PromptSet
) -> None:
    """Independent route: hooks on the model itself retain the gradients of z, v and the pattern."""
    estimates = engine.attribution_patching()
    names = {"head_out": "attn.hook_z", "head_v": "attn.hook_v", "head_pattern": "attn.hook_pattern"}
    stored: dict[str, torch.Tensor] = {}

    def keep(act: torch.Tensor, hook: Any) -> torch.Tensor:
        # the bridge continues from what a hook returns: a fresh tensor puts it on the gradient's path
        act = act.clone()
        act.retain_grad()
        stored[hook.name] = act
        return act

    def start_graph(act: torch.Tensor, hook: Any) -> torch.Tensor:
        return act.detach().requires_grad_(True)

    hooks = [("hook_embed", start_graph)] + [(f"blocks.{layer}.{name}", keep) for layer in range(2)
                                              for name in names.values()]
    with torch.enable_grad():
        logits = toy_model.run_with_hooks(ioi_prompts.corrupted_tokens, fwd_hooks=hooks)
        engine.metric(at_final_pos(logits, ioi_prompts.final_pos)).backward()
    _, clean = toy_model.run_with_cache(ioi_prompts.clean_tokens)
    for kind, name in names.items():
        expected = torch.zeros(2, 4)
        for layer in range(2):
            key = f"blocks.{layer}.{name}"
            product = (clean[key] - stored[key].detach()) * stored[key].grad
            head_axis = 1 if kind == "head_pattern" else 2
            expected[layer] = product.transpose(0, head_axis).reshape(4, -1).sum(-1)
        assert_matches(estimates[kind].values - engine.corrupted_metric, expected, FLOAT32_GRADIENT,
                       what=f"{kind} attribution patching")


def test_top_heads_come_from_the_values(engine: PatchingEngine) -> None:
    result = engine.patch("head_out")
    positive, negative = result.top(3)
    assert positive[0].value == pytest.approx(float(result.values.max()))
    assert negative[0].value == pytest.approx(float(result.values.min()))
    data = result.to_dict(k=3)
    assert data["top_positive"][0]["head"] == positive[0].name and len(data["values"]) == 2
    with pytest.raises(ValueError, match="per position"):
        engine.patch("resid_pre").top(3)


def test_position_labels_name_each_token(engine: PatchingEngine, ioi_prompts: PromptSet) -> None:
    labels = engine.patch("resid_pre").column_labels
    assert labels[0] == "0: <|endoftext|>" and len(labels) == ioi_prompts.clean_tokens.shape[1]
    assert labels[1] == f"1: {ioi_prompts.clean_str_tokens[0][1]}"


def test_unknown_kind_is_refused(engine: PatchingEngine) -> None:
    # in notebooks a ValueError; under the tests' runtime type checks, the checker refuses it first
    with pytest.raises((ValueError, TypeError), match="resid_post"):
        engine.patch("resid_post")  # type: ignore[arg-type]


def test_explicit_prompts_work_with_the_engine(toy_model: Any) -> None:
    data = {"name": "pairs", "description": "d", "model": "x", "prompts": [
        {"clean": "When John and Mary went to the shops, John gave the bag to",
         "corrupted": "When John and Mary went to the shops, Mary gave the bag to", "correct": " Mary",
         "incorrect": " John"},
        {"clean": "When Tom and James went to the park, James gave the ball to",
         "corrupted": "When Tom and James went to the park, Tom gave the ball to", "correct": " Tom",
         "incorrect": " James"}]}
    prompts = build_prompts(parse_task(data, source="pairs.yaml"), toy_model.tokenizer)
    engine = fast_engine(toy_model, prompts)
    reference = transformer_lens_patch(toy_model, prompts, "resid_pre", engine.metric)
    assert_matches(engine.patch("resid_pre").values, reference, FLOAT32_PATCHING, what="resid_pre, explicit prompts")


def test_a_tiny_clean_corrupted_gap_is_flagged() -> None:
    def anchors(clean: float, corrupted: float, kind: str = "logit_diff") -> patching.MetricAnchors:
        return patching.MetricAnchors(8, METRIC_NAMES[kind], clean, corrupted, f"normalised {METRIC_NAMES[kind]}",
                                      1.0, 0.0, "fast path", small_gap=SMALL_GAP[kind])

    assert anchors(3.2, -3.1).warning is None
    warning = anchors(-0.016, -0.015).warning
    assert warning is not None and "0.001" in warning and "noise" in warning and "logit difference" in warning
    assert anchors(-0.016, -0.015).to_dict()["warning"] == warning
    # a probability difference lives on another scale: 0.05 is a real gap there, 0.005 is not
    assert anchors(0.06, 0.01, "prob_diff").warning is None
    assert "probability difference" in (anchors(0.006, 0.001, "prob_diff").warning or "")


def test_prompts_of_one_template_line_up(engine: PatchingEngine, ioi_prompts: PromptSet) -> None:
    subset = engine.for_template(0)
    assert subset.uses_fast_path and set(subset.prompts.template_index) == {0}
    assert subset.prompts.clean_tokens.shape[1] == int(subset.prompts.final_pos.max()) + 1
    assert len(set(subset.prompts.final_pos.tolist())) == 1
    assert engine.for_template(None) is engine
    reference = transformer_lens_patch(subset.model, subset.prompts, "attn_out", subset.metric)
    assert_matches(subset.patch("attn_out").values, reference, FLOAT32_PATCHING, what="attn_out, one template")


def test_identical_clean_and_corrupted_prompts_are_refused(toy_model: Any, ioi_prompts: PromptSet) -> None:
    from dataclasses import replace

    same = replace(ioi_prompts, corrupted_tokens=ioi_prompts.clean_tokens)
    with pytest.raises(ValueError, match="nothing to patch"):
        PatchingEngine(toy_model, same, progress=False)


@pytest.fixture(scope="module")
def greater_than_prompts(toy_model: Any) -> PromptSet:
    return build_prompts(load_task("greater_than").with_overrides(n_prompts=6), toy_model.tokenizer)


@pytest.mark.parametrize("kind", ["head_out", "mlp_out"])
def test_a_task_with_a_probability_difference_metric_patches_by_it(
    kind: str, toy_model: Any, greater_than_prompts: PromptSet
) -> None:
    """No metric given: the engine normalises the task's own metric (greater-than's probability
    difference over answer sets), and agrees with transformer_lens.patching on it."""
    engine = fast_engine(toy_model, greater_than_prompts)
    assert engine.metric_name == "normalised probability difference"
    metric = greater_than_prompts.metric
    with torch.no_grad():
        clean = toy_model(greater_than_prompts.clean_tokens)
        corrupted = toy_model(greater_than_prompts.corrupted_tokens)
    final_pos = greater_than_prompts.final_pos
    clean_value = float(metric(at_final_pos(clean, final_pos)).mean())
    corrupted_value = float(metric(at_final_pos(corrupted, final_pos)).mean())
    assert engine.anchors().clean_value == pytest.approx(clean_value, abs=1e-6)

    def normalised(final_logits: torch.Tensor) -> torch.Tensor:
        return (metric(final_logits).mean() - corrupted_value) / (clean_value - corrupted_value)

    reference = transformer_lens_patch(toy_model, greater_than_prompts, kind, normalised)
    # The toy model puts little probability on the years, so the clean-corrupted gap is small: the
    # normalised metric carries the rounding of the candidates' probabilities divided by that gap.
    mass = float(at_final_pos(clean, final_pos).softmax(-1).gather(-1, metric.tokens).sum(-1).max())
    assert_matches(engine.patch(kind).values, reference, FLOAT32_PATCHING, what=f"{kind}, probability difference",  # type: ignore[arg-type]
                   scale=mass / abs(clean_value - corrupted_value))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpt2s_gelu_is_transformers_own_to_the_bit(dtype: torch.dtype) -> None:
    """The engine's GELU for GPT-2, GPT-Neo and GPT-J (in place, a block of rows at a time) gives exactly
    transformers' ``gelu_new`` on every shape it meets, blocks that do not divide the rows included; with
    gradients to record it is transformers' own, and they flow."""
    from transformers.activations import ACT2FN

    from helpers.models.forward import new_gelu

    reference = ACT2FN["gelu_new"]
    torch.manual_seed(0)
    for shape in [(3, 5, 40), (300, 7), (1, 1), (2, 130, 16)]:
        x = (torch.randn(shape) * 4).to(dtype)
        assert torch.equal(new_gelu(x), reference(x)), shape
    x = torch.randn(4, 8, requires_grad=True)
    new_gelu(x).sum().backward()
    expected = x.detach().clone().requires_grad_(True)
    reference(expected).sum().backward()
    assert x.grad is not None and torch.equal(x.grad, expected.grad)


def test_gpt2s_gelu_keeps_only_its_input_for_the_backward_pass() -> None:
    """With gradients to record, the GELU's backward pass keeps its input alone (it recomputes the rest),
    where transformers' own keeps several tensors of the input's size; the gradients stay the same."""
    from transformers.activations import ACT2FN

    from helpers.models.forward import new_gelu

    def kept_for_backward(function: Any, x: Tensor) -> int:
        kept: list[int] = []

        def pack(tensor: Tensor) -> Tensor:
            kept.append(tensor.numel())
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            function(x).sum().backward()
        return sum(kept)

    x = torch.randn(64, 300, requires_grad=True)
    ours = kept_for_backward(new_gelu, x)
    gradient = x.grad.clone()
    x.grad = None
    theirs = kept_for_backward(ACT2FN["gelu_new"], x)
    assert ours <= x.numel() + 1 < theirs, (ours, theirs, x.numel())
    assert torch.equal(gradient, x.grad)


@pytest.mark.parametrize("kind", PATCH_KINDS)
def test_each_variant_names_the_transformer_lens_function_the_tests_compare_with(kind: str) -> None:
    """The registry's reference (what ``make bench`` times against) is the one these tests check equality with."""
    assert VARIANTS[kind].reference is TL_FUNCTIONS[kind]  # type: ignore[index]
    assert (kind in PER_POSITION) == VARIANTS[kind].per_position  # type: ignore[index]


def test_an_unknown_kind_is_named_with_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown patch kind 'head_k'; use one of resid_pre, attn_out"):
        variant("head_k")


def test_the_layer_loop_is_the_models_forward_pass_whatever_it_keeps(toy_model: Any, ioi_prompts: PromptSet) -> None:
    """ForwardPass.run_layers, the one loop every run goes through: a strategy that keeps nothing changes no
    bit, every layer's activations are reported once, the final stream unembedded is the model's logits, and
    computing the last layer at the final positions alone gives those positions' streams."""
    from helpers.models.forward import ForwardPass, LayerActivations, LayerStrategy

    class Count(LayerStrategy):
        def __init__(self) -> None:
            self.layers: list[int] = []

        def layer(self, layer: int, acts: LayerActivations) -> None:
            self.layers.append(layer)
            assert acts.resid_pre.shape == acts.mlp_out.shape

    fw = ForwardPass(toy_model)
    tokens, final_pos = ioi_prompts.clean_tokens, ioi_prompts.final_pos
    with torch.no_grad():
        x = fw.embed(tokens)
        plain = fw.run_layers(x)
        counted = Count()
        assert torch.equal(fw.run_layers(x, strategy=counted), plain)
        assert counted.layers == list(range(toy_model.cfg.n_layers))
        final_only = fw.run_layers(x, final_pos=final_pos)
        reference = at_final_pos(toy_model(tokens), final_pos)
    assert_matches(fw.unembed(at_final_pos(plain, final_pos)), reference, FLOAT32_FORWARD, what="run_layers' logits")
    assert_matches(final_only, at_final_pos(plain, final_pos), FLOAT32_FORWARD, what="final positions alone")
