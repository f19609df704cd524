"""Circuit faithfulness: exact anchors, mean ablation against plain transformers GPT-2 with explicit
hooks, and a planted circuit whose heads alone do the task."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from checks import FLOAT32_FORWARD, assert_scalar_matches

from helpers.analyses import ablations
from helpers.analyses.circuits import head_circuits as circuits
from helpers.analyses.heads import HeadScore
from helpers.models.toys import PLANTED
from helpers.tasks.prompts import PromptSet, build_prompts, load_task, parse_task

NOUNS = ["cat", "dog", "house", "tree", "river", "sun", "moon", "star", "lake", "hill", "fish", "bird", "car",
         "road", "book", "door", "rain", "snow", "king", "ship"]
# "A B C D A B C" -> " D": the planted previous-token head and induction head answer it; the corrupted
# prompt swaps C and D, so the same heads point at " C" instead.
INDUCTION_TASK = {
    "name": "induction", "description": "induction on random nouns", "model": "x", "n_prompts": 16,
    "templates": ["[A] [B] [C] [D] [A] [B] [C]"], "corrupted": {"swap": ["C", "D"]},
    "correct": " [D]", "incorrect": " [C]",
    "placeholders": {"A": "NOUN", "B": "NOUN", "C": "NOUN", "D": "NOUN"}, "words": {"NOUN": NOUNS},
}


@pytest.fixture(scope="module")
def evaluator(toy_model: Any, ioi_prompts: PromptSet) -> circuits.CircuitEvaluator:
    ablation = circuits.compute_mean_ablation(toy_model, ioi_prompts, ablations.reference_prompts("corrupted", ioi_prompts))
    return circuits.CircuitEvaluator(toy_model, ioi_prompts, ablation)


def test_keeping_every_head_gives_exactly_one(evaluator: circuits.CircuitEvaluator, toy_model: Any) -> None:
    result = evaluator.evaluate(circuits.all_heads(toy_model.cfg.n_layers, toy_model.cfg.n_heads))
    assert result.faithfulness == 1.0 and result.metric == result.full_metric
    # the curve over every head ends at exactly 1, and starts at the empty circuit
    ranking = [HeadScore(layer, head, 0.0) for layer in range(2) for head in range(4)]
    curve = circuits.compute_faithfulness_curve(evaluator, circuits.circuit_from_ranking(ranking, 8), 8)
    assert curve.fractions[-1] == 1.0 and curve.fractions[0] == result.empty_faithfulness
    assert curve.fractions[3] == evaluator.evaluate(circuits.circuit_from_ranking(ranking, 3)).faithfulness


def test_circuits_evaluated_together_get_the_numbers_they_get_alone(evaluator: circuits.CircuitEvaluator,
                                                                    toy_model: Any, ioi_prompts: PromptSet) -> None:
    """Several circuits share a forward pass (one copy of the prompts each): each gets, to the bit, what
    a pass of its own gives it, interval included."""
    shapes = (toy_model.cfg.n_layers, toy_model.cfg.n_heads)
    chosen = [circuits.random_circuit(*shapes, size, seed=seed) for size in (1, 3, 5) for seed in (0, 1)]
    alone = circuits.CircuitEvaluator(toy_model, ioi_prompts, evaluator.ablation, max_rows=len(ioi_prompts))
    assert evaluator.max_rows >= len(chosen) * len(ioi_prompts)  # all of them in one pass
    together = evaluator.evaluate_all(chosen)
    assert [r.metric for r in together] == [alone.evaluate(c).metric for c in chosen]
    assert [r.ci95 for r in together] == [alone.evaluate(c).ci95 for c in chosen]
    assert len({r.metric for r in together}) > 1  # the circuits differ


def _hf_mean_ablated_logit_diff(hf: Any, prompts: PromptSet, reference: ablations.ReferencePrompts,
                                keep: torch.Tensor) -> float:
    """Mean logit difference of plain transformers GPT-2 with head outputs mean-ablated where ``keep`` is
    False: each head's slice of the input to ``c_proj`` (its ``z``, value bias included) is replaced by its
    mean over the reference prompts of the same template at the same position."""
    n_heads = hf.config.n_head
    d_head = hf.config.n_embd // n_heads
    captured: dict[int, torch.Tensor] = {}
    handles = [block.attn.c_proj.register_forward_pre_hook(
        lambda module, args, layer=layer: captured.__setitem__(layer, args[0].detach().clone()))
        for layer, block in enumerate(hf.transformer.h)]
    with torch.no_grad():
        hf(reference.tokens)
    for handle in handles:
        handle.remove()

    batch, width = prompts.clean_tokens.shape
    means = {layer: torch.zeros(batch, width, n_heads * d_head) for layer in captured}
    for b in range(batch):
        rows = [i for i, t in enumerate(reference.template_index) if t == prompts.template_index[b]]
        for position in range(int(prompts.final_pos[b]) + 1):
            reaching = [i for i in rows if int(reference.final_pos[i]) >= position]
            for layer, z in captured.items():
                means[layer][b, position] = torch.stack([z[i, position] for i in reaching]).mean(dim=0)

    def ablate(module: Any, args: tuple[torch.Tensor, ...], layer: int) -> tuple[torch.Tensor, ...]:
        z = args[0].clone()
        for b in range(batch):
            for position in range(width):
                for head in range(n_heads):
                    if not keep[b, position, layer, head]:
                        z[b, position, head * d_head : (head + 1) * d_head] = \
                            means[layer][b, position, head * d_head : (head + 1) * d_head]
        return (z,)

    handles = [block.attn.c_proj.register_forward_pre_hook(
        lambda module, args, layer=layer: ablate(module, args, layer)) for layer, block in enumerate(hf.transformer.h)]
    with torch.no_grad():
        logits = hf(prompts.clean_tokens).logits
    for handle in handles:
        handle.remove()
    rows = torch.arange(batch)
    final = logits[rows, prompts.final_pos]
    diff = final[rows, prompts.answer_tokens[:, 0]] - final[rows, prompts.answer_tokens[:, 1]]
    return float(diff.mean())


@pytest.fixture(scope="module")
def hf_toy(toy_model_dir: Path) -> Any:
    from transformers import GPT2LMHeadModel

    return GPT2LMHeadModel.from_pretrained(toy_model_dir).eval()


def test_keeping_no_head_matches_a_fully_mean_ablated_plain_gpt2(
    evaluator: circuits.CircuitEvaluator, hf_toy: Any, ioi_prompts: PromptSet
) -> None:
    keep = torch.zeros(*ioi_prompts.clean_tokens.shape, 2, 4, dtype=torch.bool)
    expected = _hf_mean_ablated_logit_diff(hf_toy, ioi_prompts, ablations.reference_prompts("corrupted", ioi_prompts),
                                           keep)
    # the baseline: the unablated model, which an ablation that did nothing would give
    assert_scalar_matches(evaluator.empty_metric, expected, FLOAT32_FORWARD, baseline=evaluator.full_metric,
                          what="every head mean-ablated")


def test_mean_ablation_at_named_positions_with_other_prompts_matches_explicit_hooks(
    toy_model: Any, hf_toy: Any, ioi_prompts: PromptSet
) -> None:
    spec = load_task("ioi").with_overrides(n_prompts=len(ioi_prompts))
    reference = ablations.reference_prompts("other_prompts", ioi_prompts, spec=spec, model=toy_model)
    assert not torch.equal(reference.tokens, ioi_prompts.clean_tokens)
    evaluator = circuits.CircuitEvaluator(toy_model, ioi_prompts,
                                          circuits.compute_mean_ablation(toy_model, ioi_prompts, reference))
    # a layer-0 head kept at two positions (only there does its output reach the later layer), and a
    # last-layer head kept everywhere
    circuit = circuits.parse_circuit([{"head": "L0H1", "positions": ["final", "S#2"]}, "L1H2"], name="partial",
                                     n_layers=2, n_heads=4)
    # where the circuit is kept, found by hand: L1H2 everywhere; L0H1 at the final token and at the second
    # occurrence of the subject (the incorrect answer's token)
    keep = torch.zeros(*ioi_prompts.clean_tokens.shape, 2, 4, dtype=torch.bool)
    keep[:, :, 1, 2] = True
    for b in range(len(ioi_prompts)):
        final = int(ioi_prompts.final_pos[b])
        subject = (ioi_prompts.clean_tokens[b, : final + 1] == ioi_prompts.answer_tokens[b, 1]).nonzero()[:, 0]
        assert len(subject) == 2
        keep[b, [final, int(subject[1])], 0, 1] = True
    assert torch.equal(circuits.keep_mask(circuit, ioi_prompts, 2, 4), keep)
    expected = _hf_mean_ablated_logit_diff(hf_toy, ioi_prompts, reference, keep)
    assert_scalar_matches(evaluator.evaluate(circuit).metric, expected, FLOAT32_FORWARD, baseline=evaluator.full_metric,
                          what="a circuit kept at named positions")
    # the positions matter: the same heads kept everywhere give another value
    everywhere = circuits.parse_circuit(["L0H1", "L1H2"], name="everywhere", n_layers=2, n_heads=4)
    assert abs(evaluator.evaluate(everywhere).metric - expected) > 100 * FLOAT32_FORWARD.atol(torch.tensor(expected))


@pytest.fixture(scope="module")
def planted_evaluator(planted: Any) -> circuits.CircuitEvaluator:
    prompts = build_prompts(parse_task(INDUCTION_TASK, source="induction.yaml"), planted.tokenizer)
    ablation = circuits.compute_mean_ablation(planted, prompts, ablations.reference_prompts("corrupted", prompts))
    return circuits.CircuitEvaluator(planted, prompts, ablation)


def test_the_planted_circuit_is_faithful_and_each_of_its_heads_is_needed(
    planted_evaluator: circuits.CircuitEvaluator,
) -> None:
    """Every head with a planted job that writes to the answer (previous-token, induction, anti-copying)
    is the whole mechanism: the other heads are silent (L0H2, output exactly zero) or have weights of std
    0.02, whose mean ablation moves the metric by about 2e-4 of the full model's."""
    assert planted_evaluator.full_metric > 2.0 and planted_evaluator.warning is None
    mechanism = circuits.parse_circuit([list(PLANTED.previous_token), list(PLANTED.induction), list(PLANTED.anti_copy)],
                                       name="planted", n_layers=2, n_heads=4)
    minimality = circuits.compute_minimality(planted_evaluator, mechanism)
    assert minimality.circuit.faithfulness == pytest.approx(1.0, abs=1e-3)
    # the previous-token and induction heads carry the answer: without either, nothing of it is left
    assert all(without < 0.0 for without in minimality.without[:2]), minimality.to_dict()
    assert all(drop > 1.0 for drop in minimality.drops[:2])
    # the anti-copying head works both ways on these prompts; its mean ablation costs a few per cent
    assert 0.01 < minimality.drops[2] < 0.2
    # the same number of other heads does not do the task
    others = circuits.parse_circuit(["L0H1", "L1H1", "L1H2"], name="others", n_layers=2, n_heads=4)
    assert planted_evaluator.evaluate(others).faithfulness < 0.0


def test_positions_resolve_by_name_occurrence_and_offset(gpt2_tokenizer: Any) -> None:
    prompts = build_prompts(load_task("ioi").with_overrides(n_prompts=4), gpt2_tokenizer)
    tokens = prompts.clean_str_tokens[0]  # "When George and Rachel went to the lake, Rachel gave a flower to"
    assert tokens[circuits.resolve_position("IO", prompts, 0)[0]] == " George"
    assert [tokens[p] for p in circuits.resolve_position("S", prompts, 0)] == [" Rachel", " Rachel"]
    assert circuits.resolve_position("S#2", prompts, 0) == [10]
    assert tokens[circuits.resolve_position("S#1+1", prompts, 0)[0]] == " went"
    assert circuits.resolve_position("final", prompts, 0) == [int(prompts.final_pos[0])]
    assert circuits.resolve_position("final-1", prompts, 0) == [int(prompts.final_pos[0]) - 1]
    assert circuits.resolve_position(3, prompts, 0) == [3]
    keep = circuits.keep_mask(circuits.IOI_PAPER_CIRCUIT, prompts, 12, 12)
    assert keep[0, :, 9, 9].nonzero()[:, 0].tolist() == [int(prompts.final_pos[0])]  # a name mover
    assert keep[0, :, 5, 5].nonzero()[:, 0].tolist() == [10]  # an induction head, at the second subject
    assert keep[0, :, 2, 2].nonzero()[:, 0].tolist() == [5]  # a previous-token head, after the first subject
    assert not keep[:, :, 1, 0].any() and len(circuits.IOI_PAPER_CIRCUIT) == 26


@pytest.mark.parametrize("position, message", [
    ("PLACE#2", "'PLACE' occurs 1 time"), ("X", "has no word 'X'"), ("final+1", "outside its tokens"),
    ("final#2", "one final token"),
])
def test_a_position_a_prompt_does_not_have_is_named(gpt2_tokenizer: Any, position: str, message: str) -> None:
    prompts = build_prompts(load_task("ioi").with_overrides(n_prompts=2), gpt2_tokenizer)
    circuit = circuits.parse_circuit([{"head": "L0H0", "positions": [position]}], name="c", n_layers=2, n_heads=4)
    with pytest.raises(circuits.CircuitError, match=message) as err:
        circuits.keep_mask(circuit, prompts, 2, 4)
    assert "Fix:" in str(err.value) and repr(position) in str(err.value)


@pytest.mark.parametrize("value, message", [
    (["L5H0"], "outside this model"), (["head one"], "is not a head"), (["L0H1", "0.1"], "listed twice"),
    ([{"head": "L0H1", "positions": ["S#"]}], "not understood"), ([{"layer": 0}], "needs a 'head'"),
    ([], "non-empty list"), ("L0H1", "non-empty list"),
])
def test_a_malformed_circuit_is_named_with_its_fix(value: Any, message: str) -> None:
    with pytest.raises(circuits.CircuitError, match=message) as err:
        circuits.parse_circuit(value, name="mine", n_layers=2, n_heads=4)
    assert "'mine'" in str(err.value) and "Fix:" in str(err.value)


def test_heads_are_read_in_every_written_form() -> None:
    circuit = circuits.parse_circuit(["L1H2", "0.3", [1, 0], {"head": "L0H0", "positions": "final"}], name="c",
                                     n_layers=2, n_heads=4)
    assert [(h.layer, h.head, h.positions) for h in circuit.heads] == [
        (1, 2, None), (0, 3, None), (1, 0, None), (0, 0, ("final",))]


def test_other_prompts_need_templates_and_references_are_named(toy_model: Any) -> None:
    spec = parse_task({"name": "pairs", "description": "d", "model": "x", "prompts": [
        {"clean": "When John and Mary went out, John gave it to", "corrupted": "When John and Mary went out, Mary gave it to",
         "correct": " Mary", "incorrect": " John"}]}, source="pairs.yaml")
    prompts = build_prompts(spec, toy_model.tokenizer)
    with pytest.raises(ablations.AblationError, match="reference = 'corrupted'"):
        ablations.reference_prompts("other_prompts", prompts, spec=spec, model=toy_model)
    with pytest.raises(ablations.AblationError, match="corrupted, other_prompts"):
        ablations.reference_prompts("clean", prompts)  # type: ignore[arg-type]


def test_the_default_comparison_says_why_the_ioi_circuit_is_left_out(toy_model: Any, ioi_prompts: PromptSet) -> None:
    others, notes = circuits.comparison_circuits(None, toy_model, ioi_prompts)
    assert others == [] and "IOI paper" in notes[0] and "2 x 4" in notes[0]
    assert circuits.random_circuit(2, 4, 3, seed=1) != circuits.random_circuit(2, 4, 3, seed=2)
    named, _ = circuits.comparison_circuits({"pair": ["L0H0", "L0H1"]}, toy_model, ioi_prompts)
    assert [c.name for c in named] == ["pair"] and len(named[0]) == 2


def test_a_model_that_does_not_do_the_task_is_flagged(planted: Any) -> None:
    # the answers the other way round: the planted heads prefer the "incorrect" one
    task = {**INDUCTION_TASK, "correct": " [C]", "incorrect": " [D]"}
    prompts = build_prompts(parse_task(task, source="reversed.yaml"), planted.tokenizer)
    evaluator = circuits.CircuitEvaluator(
        planted, prompts, circuits.compute_mean_ablation(planted, prompts, ablations.reference_prompts("corrupted", prompts)))
    assert evaluator.full_metric < 0
    assert evaluator.warning is not None and "does not prefer the correct answer" in evaluator.warning


def test_the_two_faithfulness_formulas_have_two_names() -> None:
    """A head circuit's faithfulness is the IOI paper's (a fraction of the full model's metric), a circuit of
    edges' is MIB's (normalised between the empty circuit and the full model): with an empty circuit at -0.2
    they disagree, each as its formula says."""
    from helpers.analyses.circuits.faithfulness import NormalisedFaithfulness, fraction_of_full, normalised_faithfulness
    from helpers.analyses.circuits.head_circuits import Circuit, CircuitFaithfulness

    assert fraction_of_full(0.6, 2.0) == 0.3
    assert normalised_faithfulness(0.6, 2.0, -0.2) == (0.6 + 0.2) / (2.0 + 0.2)
    assert CircuitFaithfulness(Circuit("c", ()), 0.6, 2.0, -0.2).faithfulness == 0.3
    assert NormalisedFaithfulness("c", 3, "mean", 0.6, 2.0, -0.2).faithfulness == (0.6 + 0.2) / (2.0 + 0.2)
