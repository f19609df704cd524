"""What a reader sees: tables of one sign hold only heads of that sign, intervals over prompts that
mean what they say, the default circuit chosen by its rule, random baselines, and warnings where a
figure would mislead."""

from __future__ import annotations

import math
import warnings
from typing import Any

import pytest
import torch
from checks import FLOAT32_PATCHING, assert_matches, fast_engine

from helpers.analyses import ablations, stats
from helpers.analyses.circuits import head_circuits as circuits
from helpers.analyses.dla import HeadAttribution
from helpers.analyses.heads import HeadScore, top_of_sign
from helpers.analyses.neurons import NeuronPatching
from helpers.analyses.patching.engine import MetricAnchors, PatchingEngine, PatchingResult
from helpers.analyses.vectors import UpdateVector
from helpers.tasks.prompts import PromptSet

# 12 heads, only 2 of them positive and one exactly 0: a top 10 of each sign must not pad itself out
MOSTLY_NEGATIVE = torch.tensor([[0.5, -0.1, -0.2, 0.0], [-0.4, 0.02, -0.3, -0.05], [-0.6, -0.7, -0.01, -0.8]])


def test_a_table_of_one_sign_holds_only_heads_of_that_sign() -> None:
    positive, negative = top_of_sign(MOSTLY_NEGATIVE, 10, "positive"), top_of_sign(MOSTLY_NEGATIVE, 10, "negative")
    assert [h.name for h in positive] == ["L0H0", "L1H1"]  # 2 rows, not 10; the zero is neither
    assert [h.value for h in negative] == sorted(v for v in MOSTLY_NEGATIVE.flatten().tolist() if v < 0)[:10]
    assert top_of_sign(MOSTLY_NEGATIVE, 1, "negative")[0].name == "L2H3"
    # the same rule wherever heads are listed by sign: DLA and patching
    dla = HeadAttribution(MOSTLY_NEGATIVE[..., None].repeat(1, 1, 4))
    result = PatchingResult("head_out", MOSTLY_NEGATIVE, ("H0", "H1", "H2", "H3"), "normalised logit difference")
    for data in (dla.to_dict(k=10), result.to_dict(k=10)):
        assert [h["head"] for h in data["top_positive"]] == ["L0H0", "L1H1"]
        assert all(h["value"] < 0 for h in data["top_negative"]) and len(data["top_negative"]) == 9


def test_copy_and_role_tables_list_no_head_at_zero(planted: Any) -> None:
    from helpers.analyses import copy_scores
    from helpers.analyses import head_functions as head_scores
    from helpers.tasks.prompts import build_prompts, load_task

    prompts = build_prompts(load_task({**_IOI, "model": "x"}), planted.tokenizer)
    scores = copy_scores.compute_copy_scores(planted, prompts, k=5)
    for negative in (False, True):
        listed = scores.top(8, negative=negative)
        assert all(h.value > 0 for h in listed)
        assert len(listed) == int((scores.scores(negative=negative) > 0).sum())  # every head above 0%, no more
    roles = head_scores.compute_head_role_scores(planted, batch=2)
    assert all(h.value > 0 for role in head_scores.ROLES for h in roles.top(role, 8))


def test_the_role_table_leaves_blank_rows_where_a_role_has_fewer_heads() -> None:
    """Roles with different numbers of heads above 0 (on the GPT-Neo toy: 8 for one, 4 for another) share
    one table: each role lists its own heads, and the shorter columns end in blanks, not an error."""
    from helpers.analyses.head_functions import ROLES, HeadRoleScores
    from helpers.figures.head_functions import role_score_table

    scores = {role: -torch.ones(3, 4) for role in ROLES}
    scores[ROLES[0]] = MOSTLY_NEGATIVE.abs() + 0.01  # 12 heads above 0
    scores[ROLES[1]] = MOSTLY_NEGATIVE  # 2 heads above 0; every other role has none
    table = role_score_table(HeadRoleScores(scores, seq_len=4, batch=1, seed=0), 10)
    assert len(table) == 10
    first, second = (table.iloc[:, i].tolist() for i in (0, 2))
    assert first == [h.name for h in top_of_sign(scores[ROLES[0]], 10, "positive")]
    assert second[:2] == ["L0H0", "L1H1"] and table.iloc[2:, 2].isna().all() and table.iloc[2:, 3].isna().all()
    assert table.iloc[:, 4].isna().all()


def test_the_role_summary_names_a_role_without_heads_instead_of_failing() -> None:
    """On the Mistral toy one role has no head above 0; the summary said nothing of the others then, it raised."""
    from helpers.analyses.head_functions import ROLE_NAMES, ROLES, HeadRoleScores

    scores = {role: -torch.ones(3, 4) for role in ROLES}
    scores[ROLES[0]] = MOSTLY_NEGATIVE
    line = HeadRoleScores(scores, seq_len=4, batch=1, seed=0).summary()
    assert line == (f"top heads by role: {ROLE_NAMES[ROLES[0]]} L0H0 0.50; "
                    + "; ".join(f"{ROLE_NAMES[role]}: no head above 0" for role in ROLES[1:]))


_IOI = {"name": "ioi_small", "description": "IOI", "n_prompts": 8, "seed": 0,
        "templates": ["When [IO] and [S] went to the [PLACE], [S] gave a [OBJECT] to"], "corrupted": {"swap": ["IO", "S"]},
        "correct": " [IO]", "incorrect": " [S]",
        "placeholders": {"IO": "NAME", "S": "NAME", "PLACE": "PLACE", "OBJECT": "OBJECT"},
        "words": {"NAME": ["Mary", "John", "Tom", "James", "Anna", "Paul"], "PLACE": ["store", "park"],
                  "OBJECT": ["drink", "book"]}}


# -- intervals over prompts ---------------------------------------------------------------------------

def test_the_bootstrap_interval_of_a_mean_is_the_textbook_one_for_a_normal_sample() -> None:
    """For n normal draws the percentile bootstrap of the mean is close to mean +/- 1.96 sd / sqrt(n)."""
    values = torch.randn(400, generator=torch.Generator().manual_seed(1)) * 3 + 5
    interval = stats.mean_interval(values)
    half = 1.96 * float(values.std()) / math.sqrt(len(values))
    assert interval.low < float(values.mean()) < interval.high
    assert abs((interval.high - interval.low) / 2 - half) < 0.1 * half
    assert abs((interval.low + interval.high) / 2 - float(values.mean())) < 0.1 * half
    # a constant has no spread; the same seed gives the same interval, another seed another one
    assert stats.mean_interval(torch.full((16,), 2.5)).to_list() == [2.5, 2.5]
    assert stats.mean_interval(values) == interval and stats.mean_interval(values, seed=1) != interval


def test_a_ratio_interval_resamples_numerator_and_denominator_together() -> None:
    """mean(x) / mean(y) over the same draws: with y = 2x (paired) the ratio is exactly 0.5 in every draw,
    which resampling them apart would not give."""
    x = torch.rand(32, generator=torch.Generator().manual_seed(2)) + 0.5
    assert stats.ratio_interval(x, 2 * x).to_list() == pytest.approx([0.5, 0.5], abs=1e-12)
    low, high = stats.bootstrap_ratio(torch.stack([x, 3 * x]), 2 * x)
    assert low.tolist() == pytest.approx([0.5, 1.5]) and high.tolist() == pytest.approx([0.5, 1.5])


@pytest.fixture(scope="module")
def toy_engines(toy_model: Any, ioi_prompts: PromptSet) -> tuple[PatchingEngine, PatchingEngine]:
    """The engine on its fast path, and the same engine made to patch through the model's hooks."""
    fast = fast_engine(toy_model, ioi_prompts)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(PatchingEngine, "_start_fast_path", lambda self, final: "the test asks for the hook path")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hooks = PatchingEngine(toy_model, ioi_prompts, progress=False)
    assert not hooks.uses_fast_path
    return fast, hooks


@pytest.mark.parametrize("kind", ["head_out", "head_v", "head_pattern"])
def test_head_intervals_are_built_from_the_per_prompt_values_patching_averages(
    toy_engines: tuple[PatchingEngine, PatchingEngine], kind: str,
) -> None:
    """The ratio of the per-prompt means over all prompts is the patching value itself (so the per-prompt
    values are those of the patch), on the fast path and through the model's hooks; every interval holds
    its value, and both paths give the same intervals."""
    fast, hooks = toy_engines
    result = fast.patch(kind)
    heads = [HeadScore(layer, head, float(result.values[layer, head])) for layer in range(2) for head in range(4)]
    per_path = []
    for engine in (fast, hooks):
        per_prompt = torch.stack([engine._patched_head_per_prompt(kind, h.layer, h.head) for h in heads])
        point = (per_prompt - engine._corrupted_per_prompt).mean(-1) / (
            engine._clean_per_prompt - engine._corrupted_per_prompt).mean()
        assert_matches(point, result.values.flatten(), FLOAT32_PATCHING, what=f"{kind} from per-prompt values")
        intervals = engine.head_intervals(kind, heads)
        assert all(intervals[h.name].low - 1e-5 <= h.value <= intervals[h.name].high + 1e-5 for h in heads)
        per_path.append(torch.tensor([intervals[h.name].to_list() for h in heads]))
    assert torch.allclose(per_path[0], per_path[1], atol=1e-4)
    assert float((per_path[0][:, 1] - per_path[0][:, 0]).max()) > 1e-3  # the prompts do differ


def test_faithfulness_has_an_interval_and_a_metric_of_your_own_has_none(toy_model: Any, ioi_prompts: PromptSet) -> None:
    ablation = circuits.compute_mean_ablation(toy_model, ioi_prompts, ablations.reference_prompts("corrupted", ioi_prompts))
    evaluator = circuits.CircuitEvaluator(toy_model, ioi_prompts, ablation)
    result = evaluator.evaluate(circuits.parse_circuit(["L1H0", "L1H2"], name="c", n_layers=2, n_heads=4))
    assert result.ci95 is not None and result.ci95.low < result.faithfulness < result.ci95.high
    assert evaluator.evaluate(circuits.all_heads(2, 4)).ci95.to_list() == pytest.approx([1.0, 1.0])
    own = circuits.CircuitEvaluator(toy_model, ioi_prompts, ablation, metric=lambda logits: logits[:, 0].mean())
    assert own.evaluate(circuits.all_heads(2, 4)).ci95 is None


# -- the default circuit --------------------------------------------------------------------------------

def _curve(fractions: list[float]) -> circuits.FaithfulnessCurve:
    return circuits.FaithfulnessCurve(tuple(f"L0H{i}" for i in range(len(fractions) - 1)), tuple(fractions))


RANKING = [HeadScore(0, i, 1.0 - i / 10) for i in range(6)]


@pytest.mark.parametrize(("fractions", "size", "reached"), [
    ([0.1, 0.5, 0.79, 0.85, 0.7, 1.0, 1.0], 3, True),  # the first prefix at or above 80%, not the best one
    ([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7], 6, False),  # never reached: the whole curve, and said
    ([0.9, 0.95, 1.0, 1.0, 1.0, 1.0, 1.0], 1, True),  # reached with no head at all: the top head, and said
])
def test_the_default_circuit_is_the_smallest_prefix_reaching_the_target(
    fractions: list[float], size: int, reached: bool,
) -> None:
    choice = circuits.choose_circuit(None, RANKING, _curve(fractions), target=0.8, n_layers=1, n_heads=6)
    assert [h.name for h in choice.circuit.heads] == [h.name for h in RANKING[:size]]
    assert choice.reached is reached and choice.target == 0.8 and choice.to_dict()["size"] == size
    assert ("80%" in choice.rule) and (reached or "raise `curve_max`" in choice.rule)
    if fractions[0] >= 0.8:
        assert "no head is needed" in choice.rule
    by_hand = circuits.choose_circuit(["L0H5"], RANKING, _curve(fractions), target=0.8, n_layers=1, n_heads=6)
    assert [h.name for h in by_hand.circuit.heads] == ["L0H5"] and by_hand.reached is None


def test_random_baselines_are_several_seeds_of_the_candidates_size(toy_model: Any, ioi_prompts: PromptSet) -> None:
    ablation = circuits.compute_mean_ablation(toy_model, ioi_prompts, ablations.reference_prompts("corrupted", ioi_prompts))
    evaluator = circuits.CircuitEvaluator(toy_model, ioi_prompts, ablation)
    baseline = circuits.compute_random_baseline(evaluator, 3, n_seeds=4, seed=7)
    assert baseline.seeds == (7, 8, 9, 10) and all(len(r.circuit) == 3 for r in baseline.results)
    assert len({r.circuit.heads for r in baseline.results}) > 1  # the seeds draw different heads
    assert baseline.results[0].circuit == circuits.random_circuit(2, 4, 3, seed=7)
    assert baseline.low <= baseline.mean <= baseline.high
    assert baseline.beaten_by(evaluator.evaluate(circuits.all_heads(2, 4))) is (baseline.high < 1.0)
    with pytest.raises(circuits.CircuitError, match="random_circuits = 0"):
        circuits.compute_random_baseline(evaluator, 3, n_seeds=0)


# -- warnings where a figure would mislead ------------------------------------------------------------

def test_patching_warns_when_clean_and_corrupted_are_the_wrong_way_round() -> None:
    def anchors(clean: float, corrupted: float) -> MetricAnchors:
        return MetricAnchors(8, "logit difference", clean, corrupted, "normalised logit difference", 1.0, 0.0, "fast path")

    assert anchors(2.0, -1.0).warning is None
    assert "the other way round" in anchors(-1.0, 2.0).warning
    assert "mostly noise" in anchors(1e-4, 0.0).warning


def test_a_vector_of_norm_zero_is_flagged() -> None:
    assert UpdateVector(torch.ones(8), "v", typical_norm=3.0).warning is None
    assert "cancel" in UpdateVector(torch.full((8,), 1e-4), "v", typical_norm=3.0).warning
    assert "cancel" in UpdateVector(torch.zeros(8), "v", typical_norm=0.0).warning


def test_neuron_rankings_that_tie_are_flagged() -> None:
    def neurons(effects: list[float]) -> NeuronPatching:
        exact = torch.tensor(effects)
        return NeuronPatching(0, exact, exact[None], 0.0, 1.0, "normalised logit difference")

    assert neurons([0.5, 0.4, 0.3, 0.2, 0.1]).warning(2) is None
    assert "no neuron" in neurons([0.0] * 5).warning(2)
    assert "3 neurons tie" in neurons([0.5, 0.2, 0.2, 0.2, 0.1]).warning(2)
    assert neurons([0.5, 0.2, 0.2, 0.1, 0.0]).warning(3) is None  # the tie is inside the top 3


def test_every_head_record_is_a_head_named_one_way() -> None:
    """A head's score, an important head and a circuit's head are one record with more fields: the same name,
    and results.json's entries start with the same keys."""
    from helpers.analyses.circuits.head_circuits import CircuitHead
    from helpers.analyses.heads import Head, HeadScore, head_name
    from helpers.analyses.important_heads import ImportantHead

    records = [HeadScore(1, 2, 0.5), ImportantHead(1, 2, 0.1, 0.2, 0.375, "late"), CircuitHead(1, 2, ("final",))]
    for record in records:
        assert isinstance(record, Head) and record.name == head_name(1, 2) == "L1H2"
        entry = record.to_dict()
        assert list(entry)[:3] == ["head", "layer", "head_index"] and entry["head"] == "L1H2", type(record).__name__
    assert records[2].label() == "L1H2@final"
