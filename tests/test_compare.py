"""The cross-task comparison, on hand-made results whose overlaps are known."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from checks import FLOAT32_REORDERED, assert_matches

from helpers.analyses import compare


def write_results(folder: Path, task: str, patching: list[list[float]], *, model: str = "toy",
                  metric: str = "logit difference", intervals: dict[str, Any] | None = None) -> None:
    """A results.json holding what the comparison reads; DLA is the patching map negated. ``intervals``:
    ``{"logit_diff": (mean, [low, high]), "faithfulness": ..., "L0H0": ...}`` (a head's is its patching's)."""
    intervals = intervals or {}
    templates: dict[str, Any] = {
        "patching": {"head_out": {"values": patching}, "metric": {"task_metric": "logit difference"}},
        "dla": {"heads": {"mean": [[-v for v in row] for row in patching]}},
        "head_functions": {"role_scores": {"induction": {"values": [[0.1 * (i + j) for j in range(3)] for i in range(2)]}}},
        "copy_scores": {"copy_scores": {"copy": {"values": [[0.5] * 3, [0.25] * 3]}}},
    }
    templates["patching"]["metric"]["task_metric"] = metric
    if "logit_diff" in intervals:
        templates["dla"]["logit_diff"] = {"mean": intervals["logit_diff"][0], "ci95": intervals["logit_diff"][1]}
    if "faithfulness" in intervals:
        templates["circuit"] = {"candidate": {"faithfulness": intervals["faithfulness"][0],
                                              "ci95": intervals["faithfulness"][1]}}
    templates["patching"]["head_out"]["top_positive"] = [
        {"head": name, "value": value, "ci95": ci95} for name, (value, ci95) in intervals.items() if name.startswith("L")]
    (folder / task).mkdir(parents=True)
    (folder / task / "results.json").write_text(json.dumps(
        {"task": task, "templates": templates, "provenance": {"model": model, "n_prompts": 8}}))


@pytest.fixture
def three_tasks(tmp_path: Path) -> list[compare.TaskResults]:
    # 2 layers x 3 heads; top 2 by magnitude: a = {L0H0, L1H2}, b = {L0H0, L0H1}, c = {L1H0, L1H1}
    write_results(tmp_path, "a", [[0.9, 0.0, 0.1], [0.0, 0.2, -0.8]])
    write_results(tmp_path, "b", [[0.7, -0.6, 0.0], [0.1, 0.0, 0.0]])
    write_results(tmp_path, "c", [[0.0, 0.0, 0.1], [0.5, 0.4, 0.0]])
    return compare.load_task_results(["a", "b", "c"], tmp_path)


def test_overlap_and_jaccard_of_the_top_heads(three_tasks: list[compare.TaskResults]) -> None:
    sets = compare.compute_head_sets(three_tasks, k=2)
    assert sets.heads_of("a") == {(0, 0), (1, 2)} and sets.heads_of("c") == {(1, 0), (1, 1)}
    assert sets.overlap.tolist() == [[2, 1, 0], [1, 2, 0], [0, 0, 2]]
    torch.testing.assert_close(sets.jaccard, torch.tensor([[1, 1 / 3, 0], [1 / 3, 1, 0], [0, 0, 1]]))
    assert sets.mean_jaccard == pytest.approx((1 / 3 + 1 / 3) / 6)
    # DLA is the negated map here: the same heads by magnitude
    assert compare.compute_head_sets(three_tasks, measure="dla", k=2).overlap.tolist() == sets.overlap.tolist()


def test_shared_and_specific_heads(three_tasks: list[compare.TaskResults]) -> None:
    shared = compare.compute_shared_heads(compare.compute_head_sets(three_tasks, k=2))
    assert shared.shared == []  # no head is in all three sets
    assert shared.most_shared == ["L0H0"] and shared.in_tasks["L0H0"] == ("a", "b")
    assert shared.specific("a") == ["L1H2"] and shared.specific("b") == ["L0H1"]
    assert shared.specific("c") == ["L1H0", "L1H1"]
    scores = compare.head_function_scores(three_tasks, shared.most_shared, shared.positions)
    assert scores["L0H0"]["b"] == pytest.approx({"induction": 0.0, "copy": 0.5, "patching": 0.7, "dla": -0.7})


def test_map_correlations_are_pearsons_r(three_tasks: list[compare.TaskResults]) -> None:
    correlations = compare.compute_map_correlations(three_tasks)
    maps = torch.stack([r.heads["patching"].flatten() for r in three_tasks])
    assert_matches(correlations, torch.corrcoef(maps).float(), FLOAT32_REORDERED, what="patching-map correlations")


def test_results_that_cannot_be_compared_are_explained(tmp_path: Path) -> None:
    write_results(tmp_path, "a", [[0.9, 0.0, 0.1], [0.0, 0.2, -0.8]], model="gpt2")
    write_results(tmp_path, "wide", [[0.9, 0.0, 0.1, 0.0], [0.0, 0.2, -0.8, 0.0]], model="other")
    with pytest.raises(compare.CompareError, match=r"wide ran on other \(2 layers x 4 heads\).*Fix: run both on one"):
        compare.load_task_results(["a", "wide"], tmp_path)
    with pytest.raises(compare.CompareError, match='no results for x, y.*make run TASK="x y"'):
        compare.load_task_results(["a", "x", "y"], tmp_path)
    data = json.loads((tmp_path / "a" / "results.json").read_text())
    del data["templates"]["copy_scores"]
    (tmp_path / "a" / "results.json").write_text(json.dumps(data))
    with pytest.raises(compare.CompareError, match="a's results.json has no 'copy_scores'.*make run TASK=a"):
        compare.load_task_results(["a"], tmp_path)


def test_tasks_on_differently_named_models_are_warned_about(tmp_path: Path) -> None:
    write_results(tmp_path, "a", [[0.9, 0.0, 0.1], [0.0, 0.2, -0.8]], model="gpt2")
    write_results(tmp_path, "b", [[0.9, 0.0, 0.1], [0.0, 0.2, -0.8]], model="distilgpt2")
    results = compare.load_task_results(["a", "b"], tmp_path)
    assert "different models (distilgpt2, gpt2)" in (compare.model_warning(results) or "")


def test_differences_beyond_noise_are_those_whose_intervals_are_apart(tmp_path: Path) -> None:
    write_results(tmp_path, "a", [[0.9, 0.0, 0.1], [0.0, 0.2, -0.8]], intervals={
        "logit_diff": (3.0, [2.5, 3.5]), "faithfulness": (0.9, [0.8, 1.0]), "L0H0": (0.9, [0.85, 0.95]),
        "L1H1": (0.2, [0.1, 0.3])})
    write_results(tmp_path, "b", [[0.7, -0.6, 0.0], [0.1, 0.0, 0.0]], intervals={
        "logit_diff": (1.0, [0.5, 1.5]), "faithfulness": (0.85, [0.7, 0.95]), "L0H0": (0.7, [0.6, 0.8])})
    write_results(tmp_path, "p", [[0.0, 0.0, 0.1], [0.5, 0.4, 0.0]], metric="probability difference", intervals={
        "logit_diff": (0.3, [0.2, 0.4]), "faithfulness": (0.2, [0.1, 0.3])})
    results = compare.load_task_results(["a", "b", "p"], tmp_path)
    assert results[0].intervals["output patching of L0H0"] == (0.9, (0.85, 0.95))
    found = {(d.quantity, d.tasks): d.beyond_noise for d in compare.compute_differences(results)}
    assert found == {
        ("mean logit difference", ("a", "b")): True,  # [2.5, 3.5] vs [0.5, 1.5]
        ("circuit faithfulness", ("a", "b")): False,  # [0.8, 1.0] vs [0.7, 0.95] overlap
        ("output patching of L0H0", ("a", "b")): True,  # [0.85, 0.95] vs [0.6, 0.8]
        # p's metric is another: its logit difference is not compared, its normalised faithfulness is
        ("circuit faithfulness", ("a", "p")): True,
        ("circuit faithfulness", ("b", "p")): True,
    }  # L1H1 has an interval in a only: not compared
    line = compare.describe_differences(compare.compute_differences(results))
    assert line.startswith("4 of 5 figures compared between tasks differ beyond prompt noise; the largest: "
                           "mean logit difference, a 3.000 vs b 1.000")
    assert compare.describe_differences([]).startswith("no figure has an interval in two tasks")


def test_roles_and_edges_are_compared_task_by_task(tmp_path: Path) -> None:
    def circuit_section(roles: dict[str, str], edges: list[tuple[str, str, str | None]]) -> dict[str, Any]:
        return {"roles": {h: {"role": r, "confidence": 1.0, "evidence": ["by hand"]} for h, r in roles.items()},
                "edges": [{"sender": s, "receiver": r, "input": i, "score": 0.5, "method": "path_patching"}
                          for s, r, i in edges]}

    for task, roles, edges in (
        ("a", {"L0H0": "induction", "L1H2": "name_mover"}, [("L0H0", "L1H2", "q"), ("L1H2", "logits", None)]),
        ("b", {"L0H0": "induction", "L1H2": "copy"}, [("L0H0", "L1H2", "q"), ("L0H1", "L1H2", "k")]),
        ("c", {}, []),
    ):
        write_results(tmp_path, task, [[0.9, 0.0, 0.1], [0.0, 0.2, -0.8]])
        data = json.loads((tmp_path / task / "results.json").read_text())
        if roles:
            data["templates"]["circuit_discovery"] = circuit_section(roles, edges)
        (tmp_path / task / "results.json").write_text(json.dumps(data))
    both = compare.compare_circuits(compare.load_task_results(["a", "b"], tmp_path))
    assert both.roles == {"L0H0": {"a": "induction", "b": "induction"}, "L1H2": {"a": "name_mover", "b": "copy"}}
    assert both.same_role == ["L0H0"] and both.shared_edges == ["L0H0->L1H2<q>"]
    assert both.jaccard[0, 1] == pytest.approx(1 / 3) and both.missing == []
    with_c = compare.compare_circuits(compare.load_task_results(["a", "b", "c"], tmp_path))
    assert with_c.missing == ["c"] and with_c.shared_edges == [] and with_c.same_role == []
    assert torch.isnan(with_c.jaccard[2, 2]) and with_c.jaccard[0, 2] == 0.0
