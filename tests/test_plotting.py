"""Every figure shows the numbers of its result, on the right axes and scale.

Each ``plot_*`` function of the figure modules (:mod:`helpers.figures`) is called on results computed on the toy models, and
what it draws is read back from the figure: the values, the labels, the colour scale. A test also fails
when a new ``plot_*`` function has no check here.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
import pytest
import torch

from helpers.analyses import ablations, compare, copy_scores, head_ablation, neurons, vectors
from helpers.analyses import dla as attribution
from helpers.analyses import head_functions as head_scores
from helpers.analyses import sweep as sweep_analysis
from helpers.analyses.ablations import ABLATION_KINDS
from helpers.analyses.circuits import discovery, graph_runner, head_roles
from helpers.analyses.circuits import head_circuits as circuit
from helpers.analyses.heads import HeadScore
from helpers.analyses.patching.engine import PatchingEngine, PatchingResult, compare_attribution
from helpers.figures import circuits as circuits_figures
from helpers.figures import compare as compare_figures
from helpers.figures import copy_scores as copy_scores_figures
from helpers.figures import discovery as discovery_figures
from helpers.figures import dla as dla_figures
from helpers.figures import head_functions as head_functions_figures
from helpers.figures import heads as head_figures
from helpers.figures import neurons as neurons_figures
from helpers.figures import patching as patching_figures
from helpers.figures import static
from helpers.figures import sweep as sweep_figures
from helpers.figures import vectors as vectors_figures
from helpers.paths import REPO_ROOT
from helpers.tasks.prompts import PromptSet, load_task


def values_of(trace: Any, axis: str) -> list[Any]:
    return [list(row) if isinstance(row, (list, tuple)) else row for row in getattr(trace, axis)]


def assert_diverging_around_zero(trace: Any, values: torch.Tensor) -> None:
    bound = float(values.abs().max())
    assert trace.zmid == 0 and trace.zmin == pytest.approx(-bound) and trace.zmax == pytest.approx(bound)


@pytest.fixture(scope="module")
def results(toy_model: Any, ioi_prompts: PromptSet, planted: Any) -> dict[str, Any]:
    """One of each result the figures take, computed on the toy and planted models."""
    cache = attribution.run_final_position_cache(toy_model, ioi_prompts)
    engine = PatchingEngine(toy_model, ioi_prompts, progress=False)
    head_out, head_v = engine.patch("head_out"), engine.patch("head_v")
    estimate = engine.attribution_patching()["head_out"]
    ablation_result = head_ablation.compute_head_ablation(toy_model, ioi_prompts, cache, 1, 0)
    evaluator = circuit.CircuitEvaluator(toy_model, ioi_prompts, circuit.compute_mean_ablation(
        toy_model, ioi_prompts, ablations.reference_prompts("corrupted", ioi_prompts)))
    candidate = circuit.parse_circuit(["L1H0", "L0H2", "L1H3"], name="c", n_layers=2, n_heads=4)
    neuron_result = neurons.compute_neuron_patching(engine, 1)
    targets = vectors.target_prompts("corrupted", ioi_prompts, toy_model)
    vector = vectors.extract_update_vector(cache, component="mlp", layer=0)
    scores = copy_scores.compute_copy_scores(toy_model, ioi_prompts)
    heads = [HeadScore(1, 0, 0.5), HeadScore(0, 3, -0.2)]
    task_results = [compare.TaskResults(name, "m", 12, "logit difference", {"patching": head_out.values * sign,
                                                                              "dla": head_v.values},
                                        {"mean logit difference": (2.0 * sign, (2.0 * sign - 0.5, 2.0 * sign + 0.25)),
                                         "output patching of L1H0": (0.4, (0.3, 0.5))})
                    for name, sign in (("a", 1.0), ("b", -1.0))]
    runner = graph_runner.GraphRunner(toy_model, ioi_prompts)
    walk = discovery.walk_paths(runner, threshold=0.05, max_receivers=4)
    edge_scores = runner.eap()
    roles = {name: head_roles.HeadRole("name_mover" if name == "L1H0" else "unknown", 1.0, ("by hand",))
             for name in runner.graph.senders if name.startswith("L")}
    return {
        "runner": runner, "walk": walk, "edge_curves": [runner.faithfulness_by_edges(edge_scores, "resample",
                                                                                    fractions=(0.1, 0.5, 1.0))],
        "by_ablation": {kind: [runner.evaluate(edge_scores.circuit(10), kind)] for kind in ABLATION_KINDS},
        "diagram": discovery.build_diagram(runner, walk.edges, roles),
        "cache": cache, "prompts": ioi_prompts, "anchors": engine.anchors(),
        "logit_diff": attribution.compute_logit_diff(cache, ioi_prompts),
        "lens": attribution.compute_logit_lens(cache),
        "components": attribution.compute_component_attribution(cache),
        "heads": attribution.compute_head_attribution(toy_model, cache),
        "patterns": attribution.compute_attention_patterns(toy_model, ioi_prompts, heads + [HeadScore(0, 0, 0.1)]),
        "resid": engine.patch("resid_pre"), "head_out": head_out, "head_v": head_v, "estimate": estimate,
        "agreement": compare_attribution(head_out, estimate),
        "roles": head_scores.compute_head_role_scores(planted, seq_len=10, batch=4),
        "ablation": ablation_result,
        "copy": scores,
        "successors": copy_scores.compute_successor_scores(toy_model, load_task("months")),
        "projection": copy_scores.compute_attention_vs_projection(toy_model, ioi_prompts, heads)[0],
        "faithfulness": evaluator.evaluate(candidate),
        "curve": circuit.compute_faithfulness_curve(evaluator, candidate, 3),
        "minimality": circuit.compute_minimality(evaluator, candidate),
        "comparison": [evaluator.evaluate(candidate), evaluator.evaluate(circuit.random_circuit(2, 4, 3))],
        "baseline": circuit.compute_random_baseline(evaluator, 3, n_seeds=3),
        "vector": vectors.compute_vector_arithmetic(toy_model, targets, vector, layers=[0], n_random=2),
        "neurons": neuron_result,
        "activations": neurons.compute_neuron_activations(toy_model, ioi_prompts, 1, neuron_result.top(3)),
        "tasks": task_results,
        "sweep": hand_made_sweep(),
    }


def hand_made_sweep() -> sweep_analysis.SweepResults:
    """Two tasks on two models of different shapes; months did not land on the second model."""
    def pair(task: str, model: str, shape: tuple[int, int], edges: set[str], size: int) -> sweep_analysis.PairResults:
        return sweep_analysis.PairResults(task, model, f"notebooks/{task}@{model}", shape, "logit_diff", 1.5, size, 0.9,
                                          {"L1H0": "name_mover"}, frozenset(edges), {})
    return sweep_analysis.SweepResults(("small", "large"), ("ioi", "months"), {
        "small": {"ioi": pair("ioi", "small", (2, 4), {"L1H0->logits", "L0H1->L1H0<q>"}, 12),
                  "months": pair("months", "small", (2, 4), {"L1H0->logits"}, 7)},
        "large": {"ioi": pair("ioi", "large", (3, 4), {"L1H0->logits"}, 20)}})


def check_logit_diff(r: dict[str, Any]) -> go.Figure:
    result = r["logit_diff"]
    fig = dla_figures.plot_logit_diff(result)
    bar = fig.data[0]
    assert list(bar.y) == result.per_prompt.tolist() and len(bar.x) == len(result.prompts)
    assert list(bar.marker.color) == ["#2166ac" if v > 0 else "#b2182b" for v in result.per_prompt.tolist()]
    return fig


def check_logit_lens(r: dict[str, Any]) -> go.Figure:
    result = r["lens"]
    fig = dla_figures.plot_logit_lens(result)
    assert len(fig.data) == result.per_prompt.shape[1] + 1  # one line per prompt, then the mean
    assert list(fig.data[-1].y) == pytest.approx(result.mean.tolist()) and list(fig.data[-1].x) == list(result.labels)
    return fig


def check_component_attribution(r: dict[str, Any]) -> go.Figure:
    result = r["components"]
    fig = dla_figures.plot_component_attribution(result)
    assert list(fig.data[0].x) == list(result.labels) and list(fig.data[0].y) == pytest.approx(result.mean.tolist())
    return fig


def check_head_heatmap(r: dict[str, Any]) -> go.Figure:
    values = torch.tensor([[0.5, -2.0], [1.0, 0.25]])
    fig = head_figures.plot_head_heatmap(values.tolist(), "t", colorbar_title="unit")
    trace = fig.data[0]
    assert values_of(trace, "z") == values.tolist() and trace.colorbar.title.text == "unit"
    assert_diverging_around_zero(trace, values)
    assert [list(row) for row in trace.customdata] == [["L0H0", "L0H1"], ["L1H0", "L1H1"]]
    unit = head_figures.plot_head_heatmap([[0.2, 0.9]], "u", unit_interval=True).data[0]
    assert (unit.zmin, unit.zmax, unit.zmid) == (0, 1, None)
    return fig


def check_head_attribution(r: dict[str, Any]) -> go.Figure:
    fig = dla_figures.plot_head_attribution(r["heads"])
    assert values_of(fig.data[0], "z") == r["heads"].mean.tolist()
    assert_diverging_around_zero(fig.data[0], r["heads"].mean)
    return fig


def check_attention_patterns(r: dict[str, Any]) -> go.Figure:
    result = r["patterns"]
    fig = dla_figures.plot_attention_patterns(result)
    assert len(fig.data) == len(result.heads)
    for trace, pattern in zip(fig.data, result.patterns):
        assert values_of(trace, "z") == pattern.tolist() and (trace.zmin, trace.zmax) == (0, 1)
        assert len(trace.x) == len(result.str_tokens) and trace.x[1] == f"1: {result.str_tokens[1]}"
    assert [a.text.split(" ")[0] for a in fig.layout.annotations] == result.head_names
    return fig


def check_patching(r: dict[str, Any]) -> go.Figure:
    for result in (r["resid"], r["head_out"]):
        fig = patching_figures.plot_patching(result)
        assert values_of(fig.data[0], "z") == result.values.tolist()
        assert_diverging_around_zero(fig.data[0], result.values)
    assert list(fig.data[0].x) == [0, 1, 2, 3]  # heads across
    per_position = patching_figures.plot_patching(r["resid"]).data[0]
    assert list(per_position.x) == list(r["resid"].column_labels)
    return fig


def check_head_scatter(r: dict[str, Any]) -> go.Figure:
    fig = patching_figures.plot_head_scatter(r["head_out"], r["head_v"], x_title="out", y_title="v", title="t")
    layers, diagonal = fig.data[:-1], fig.data[-1]
    assert [list(t.x) for t in layers] == r["head_out"].values.tolist() and [list(t.y) for t in layers] == r["head_v"].values.tolist()
    assert list(layers[0].text)[:2] == ["L0H0", "L0H1"] and diagonal.mode == "lines"
    # a layer is a category: one discrete colour each, named in the legend
    assert [t.name for t in layers] == ["layer 0", "layer 1"] and len({t.marker.color for t in layers}) == 2
    return fig


def check_attribution_agreement(r: dict[str, Any]) -> go.Figure:
    fig = patching_figures.plot_attribution_agreement(r["head_out"], r["estimate"], r["agreement"])
    assert [list(t.y) for t in fig.data[:-1]] == r["estimate"].values.tolist()
    assert f"{r['agreement'].pearson:.3f}" in fig.layout.title.text
    return fig


def check_role_scores(r: dict[str, Any]) -> go.Figure:
    scores = r["roles"]
    fig = head_functions_figures.plot_role_scores(scores, "induction")
    assert values_of(fig.data[0], "z") == scores.scores["induction"].tolist() and fig.data[0].zmax == 1
    return fig


def check_ablation_dla(r: dict[str, Any]) -> go.Figure:
    result = r["ablation"]
    fig = head_functions_figures.plot_ablation_dla(result)
    assert [list(t.x) for t in fig.data[:-1]] == result.dla_before.tolist()
    assert [list(t.y) for t in fig.data[:-1]] == result.dla_after.tolist()
    return fig


def check_successor_scores(r: dict[str, Any]) -> go.Figure:
    scores = r["successors"]
    fig = copy_scores_figures.plot_successor_scores(scores)
    assert values_of(fig.data[0], "z") == scores.values.tolist() and "12 words of M" in fig.layout.title.text
    table = copy_scores_figures.successor_table(scores, 3)
    assert list(table.index) == [h.name for h in scores.top(3)]
    return fig


def check_circuit_size_by_model(r: dict[str, Any]) -> go.Figure:
    fig = sweep_figures.plot_circuit_size_by_model(r["sweep"])
    assert [t.name for t in fig.data] == ["ioi", "months"] and list(fig.data[0].x) == ["small", "large"]
    assert list(fig.data[0].y) == [12, 20] and list(fig.data[1].y) == [7, None]  # months did not run on large
    return fig


def check_task_overlap(r: dict[str, Any]) -> go.Figure:
    fig = sweep_figures.plot_task_overlap(r["sweep"], "small")
    assert values_of(fig.data[0], "z") == [[1.0, 0.5], [0.5, 1.0]]  # one shared edge of two in either
    return fig


def check_model_overlap(r: dict[str, Any]) -> go.Figure:
    fig = sweep_figures.plot_model_overlap(r["sweep"], "ioi")
    z = values_of(fig.data[0], "z")
    assert z[0][0] == 1.0 and z[1][1] == 1.0 and all(v != v for v in (z[0][1], z[1][0]))  # shapes differ: NaN
    table = sweep_figures.roles_table(r["sweep"], "ioi")
    assert list(table.columns) == ["small", "large"] and table.loc["name mover"].tolist() == ["L1H0", "L1H0"]
    return fig


def check_copy_scores(r: dict[str, Any]) -> go.Figure:
    scores = r["copy"]
    fig = copy_scores_figures.plot_copy_scores(scores, negative=True)
    assert values_of(fig.data[0], "z") == scores.negative.tolist() and fig.layout.title.text.startswith("Negative")
    return fig


def check_attention_vs_projection(r: dict[str, Any]) -> go.Figure:
    result = r["projection"]
    fig = copy_scores_figures.plot_attention_vs_projection(result)
    roles = list(dict.fromkeys(result.roles))
    assert [t.name for t in fig.data] == roles
    assert sum(len(t.x) for t in fig.data) == len(result.roles)
    first = [i for i, role in enumerate(result.roles) if role == roles[0]]
    assert list(fig.data[0].x) == [result.attention.tolist()[i] for i in first]
    return fig


def check_faithfulness(r: dict[str, Any]) -> go.Figure:
    result = r["faithfulness"]
    fig = circuits_figures.plot_faithfulness(result)
    assert list(fig.data[0].y) == [1.0, result.faithfulness, result.empty_faithfulness]
    return fig


def check_faithfulness_curve(r: dict[str, Any]) -> go.Figure:
    curve = r["curve"]
    fig = circuits_figures.plot_faithfulness_curve(curve, target=0.8, chosen=2)
    assert list(fig.data[0].y) == list(curve.fractions) and list(fig.layout.xaxis.ticktext)[1] == f"+{curve.heads[0]}"
    assert list(fig.data[1].x) == [2] and list(fig.data[1].y) == [curve.fractions[2]]  # where the candidate stops
    assert 0.8 in [shape.y0 for shape in fig.layout.shapes]  # the target line
    return fig


def check_minimality(r: dict[str, Any]) -> go.Figure:
    result = r["minimality"]
    fig = circuits_figures.plot_minimality(result)
    assert list(fig.data[0].y) == list(result.drops) and list(fig.data[0].x) == list(result.heads)
    return fig


def check_circuit_comparison(r: dict[str, Any]) -> go.Figure:
    fig = circuits_figures.plot_circuit_comparison(r["comparison"], r["baseline"])
    assert list(fig.data[0].y) == [c.faithfulness for c in r["comparison"]]
    assert list(fig.data[0].error_y.array) == [c.ci95.high - c.faithfulness for c in r["comparison"]]
    assert list(fig.data[1].y) == list(r["baseline"].faithfulness) and list(fig.data[2].y) == [r["baseline"].mean]
    return fig


def check_vector_effect(r: dict[str, Any]) -> go.Figure:
    result = r["vector"]
    fig = vectors_figures.plot_vector_effect(result)
    assert list(fig.data[0].y) == [result.before.top_share, result.after.top_share] + [x.top_share for x in result.random]
    return fig


def check_vector_logit_lens(r: dict[str, Any]) -> go.Figure:
    result = r["vector"]
    fig = vectors_figures.plot_vector_logit_lens(result)
    assert list(fig.data[0].y) == pytest.approx(result.before.lens_probs.mean(dim=1).tolist())
    assert list(fig.data[1].y) == pytest.approx(result.after.lens_probs.mean(dim=1).tolist())
    return fig


def check_neuron_patching(r: dict[str, Any]) -> go.Figure:
    result = r["neurons"]
    fig = neurons_figures.plot_neuron_patching(result, 3)
    colours = list(fig.data[0].marker.color)
    assert list(fig.data[0].y) == result.effect.tolist()
    assert [n for n, c in enumerate(colours) if c == "#b2182b"] == sorted(result.top(3))
    return fig


def check_neuron_attribution(r: dict[str, Any]) -> go.Figure:
    result = r["neurons"]
    fig = neurons_figures.plot_neuron_attribution(result)
    assert list(fig.data[0].x) == result.effect.tolist() and list(fig.data[0].y) == result.estimated_effect.tolist()
    return fig


def check_neuron_screen(r: dict[str, Any]) -> go.Figure:
    result = r["neurons"]
    fig = neurons_figures.plot_neuron_screen(result)
    assert [t.name for t in fig.data] == ["L0", "L1"]
    assert list(fig.data[1].y) == pytest.approx((result.estimate[1] - result.corrupted_metric).tolist())
    return fig


def check_neuron_activations(r: dict[str, Any]) -> go.Figure:
    result = r["activations"]
    fig = neurons_figures.plot_neuron_activations(result)
    assert len(fig.data) == 2 * len(result.neurons)
    assert list(fig.data[0].y) == result.clean[0].tolist() and list(fig.data[1].y) == result.corrupted[0].tolist()
    return fig


def check_importance_by_task(r: dict[str, Any]) -> go.Figure:
    fig = compare_figures.plot_importance_by_task(r["tasks"], "patching")
    assert [a.text for a in fig.layout.annotations] == ["a", "b"]
    assert values_of(fig.data[1], "z") == r["tasks"][1].heads["patching"].tolist()
    return fig


def check_task_matrix(r: dict[str, Any]) -> go.Figure:
    values = torch.tensor([[1.0, -0.5], [-0.5, 1.0]])
    fig = compare_figures.plot_task_matrix(values, ["a", "b"], "t", colorbar_title="r", signed=True)
    trace = fig.data[0]
    assert values_of(trace, "z") == values.tolist() and values_of(trace, "text") == [["1.00", "-0.50"], ["-0.50", "1.00"]]
    assert (trace.zmin, trace.zmax, trace.zmid) == (-1, 1, 0)
    return fig


def check_path_map(r: dict[str, Any]) -> go.Figure:
    walk, senders = r["walk"], r["runner"].graph.senders
    [receiver, *_] = [name for name in walk.receivers if name.startswith("L")]  # a head: three inputs
    fig = discovery_figures.plot_path_map(walk, receiver, senders)
    trace = fig.data[0]
    assert list(trace.y) == ["q", "k", "v"] and list(trace.x) == [s for s in senders if s in walk.maps[f"{receiver}<q>"]]
    assert values_of(trace, "z")[1] == [walk.maps[f"{receiver}<k>"][s] for s in trace.x]
    assert trace.zmid == 0 and trace.zmax == -trace.zmin
    return fig


def check_edge_faithfulness(r: dict[str, Any]) -> go.Figure:
    [curve] = r["edge_curves"]
    fig = discovery_figures.plot_edge_faithfulness(r["edge_curves"])
    assert list(fig.data[0].y) == list(curve.faithfulness) and list(fig.data[0].customdata) == list(curve.n_edges)
    assert f"CPR {curve.cpr:.2f}" in fig.data[0].name and list(fig.layout.xaxis.ticktext) == ["10%", "50%", "100%"]
    return fig


def check_ablation_kinds(r: dict[str, Any]) -> go.Figure:
    fig = circuits_figures.plot_ablation_kinds(r["by_ablation"])
    assert [t.y[0] for t in fig.data] == [rows[0].faithfulness for rows in r["by_ablation"].values()]
    assert len({t.name for t in fig.data}) == 3
    return fig


def check_circuit_diagram(r: dict[str, Any]) -> go.Figure:
    diagram = r["diagram"]
    fig = discovery_figures.plot_circuit_diagram(diagram)
    edges = [t for t in fig.data if t.meta == "edge"]
    [nodes] = [t for t in fig.data if t.meta == "nodes"]
    legend = [t.name for t in fig.data if t.meta == "legend"]
    g = diagram.graph
    # one line per input an edge enters
    assert len(edges) == sum(max(1, len(d["inputs"])) for _, _, d in g.edges(data=True))
    assert list(nodes.text) == list(g.nodes) and len(nodes.x) == g.number_of_nodes()
    roles = {g.nodes[n]["role"] for n in g.nodes} - {"input", "logits"}
    assert set(legend) >= {head_roles.ROLE_LABELS.get(r, r) for r in roles}  # each role's colour named
    hover = dict(zip(g.nodes, nodes.hovertext))
    if "L1H0" in hover and g.nodes["L1H0"]["role"] == "name_mover":
        assert hover["L1H0"].startswith("L1H0: name mover, acts at ")
    layers = sorted({d["layer"] for _, d in g.nodes(data=True)})
    assert [layers[int(x)] for x in nodes.x] == [g.nodes[n]["layer"] for n in g.nodes]  # a column per layer value
    assert list(fig.layout.xaxis.ticktext)[0] == "input" and list(fig.layout.xaxis.ticktext)[-1] == "logits"
    widths = [t.line.width for t in edges]
    scores = [abs(float(t.text.rsplit(": ", 1)[1])) for t in edges]
    assert widths.index(max(widths)) == scores.index(max(scores))  # the strongest edge is the widest
    return fig


def check_task_intervals(r: dict[str, Any]) -> go.Figure:
    fig = compare_figures.plot_task_intervals(r["tasks"])
    [trace] = fig.data  # only the mean logit difference has intervals here (head intervals are in the table)
    assert list(trace.x) == ["a", "b"] and list(trace.y) == [2.0, -2.0]
    assert list(trace.error_y.array) == [0.25, 0.25] and list(trace.error_y.arrayminus) == [0.5, 0.5]
    assert [a.text for a in fig.layout.annotations] == ["mean logit difference"]
    return fig


FIGURE_MODULES = [importlib.import_module(f"helpers.figures.{path.stem}") for path in
                  sorted((REPO_ROOT / "helpers" / "figures").glob("*.py")) if path.stem not in ("__init__", "static", "images", "viz")]
CHECKS: dict[str, Callable[[dict[str, Any]], go.Figure]] = {
    name.replace("check_", "plot_"): function for name, function in globals().items() if name.startswith("check_")
}


def test_every_plot_function_has_a_check() -> None:
    plots = {name for module in FIGURE_MODULES for name, member in inspect.getmembers(module, inspect.isfunction)
             if name.startswith("plot_") and member.__module__ == module.__name__}
    assert plots == set(CHECKS), f"without a check: {sorted(plots - set(CHECKS))}"


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_each_figure_shows_its_results_values(name: str, results: dict[str, Any]) -> None:
    figure = CHECKS[name](results)
    assert isinstance(figure, go.Figure) and figure.layout.title.text


def test_head_table_pads_the_shorter_side() -> None:
    table = head_figures.head_table([HeadScore(0, 1, 0.5), HeadScore(1, 0, 0.2)], [HeadScore(1, 1, -0.3)], value_name="x")
    assert list(table["positive head"]) == ["L0H1", "L1H0"] and list(table["negative head"])[0] == "L1H1"
    assert table["negative head"].isna().tolist() == [False, True] and list(table.index) == [1, 2]


def test_tables_hold_the_results_numbers(results: dict[str, Any]) -> None:
    anchors = results["anchors"]
    table = patching_figures.anchors_table(anchors)
    assert list(table.index) == ["clean", "corrupted"]
    assert list(table[f"mean {anchors.task_metric}"]) == [anchors.clean_value, anchors.corrupted_value]
    comparison = circuits_figures.circuit_comparison_table(results["comparison"], results["baseline"])
    assert list(comparison["faithfulness"]) == [c.faithfulness for c in results["comparison"]] + [results["baseline"].mean]
    assert list(comparison["95% interval"])[:2] == [str(c.ci95) for c in results["comparison"]]
    differences = compare_figures.differences_table(compare.compute_differences(results["tasks"]))
    assert list(differences["figure"]) == ["mean logit difference", "output patching of L1H0"]  # beyond noise first
    assert list(differences["beyond noise"]) == ["yes", "no"]
    assert list(differences["95% intervals"])[0] == "[+1.500, +2.250] vs [-2.500, -1.750]"
    agreement = patching_figures.agreement_table([results["agreement"]])
    assert list(agreement["Pearson r"]) == [results["agreement"].pearson]


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_each_figure_has_a_static_image_of_its_size(name: str, results: dict[str, Any], tmp_path: Path) -> None:
    """Where JavaScript does not run (GitHub, nbconvert) the PNG is what a reader sees: every figure has
    one, of the figure's size, with something drawn on it."""
    import matplotlib.image
    import numpy as np

    figure = CHECKS[name](results)
    path = tmp_path / f"{name}.png"
    path.write_bytes(static.png(figure))
    pixels = matplotlib.image.imread(path)
    width, height = figure.layout.width or static.DEFAULT_SIZE[0], figure.layout.height or static.DEFAULT_SIZE[1]
    assert pixels.shape[:2] == (height, width)
    assert len(np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0)) > 20  # not a blank canvas


def test_float_noise_is_not_drawn_as_an_effect() -> None:
    """A patch that changes nothing leaves float noise (+/-5e-6): the colour range does not stretch to it."""
    noise = PatchingResult("mlp_out", torch.tensor([[5e-6, -4e-6, 0.0], [1e-6, -5e-6, 2e-6]]), ("0", "1", "2"),
                           "normalised logit difference")
    figure = patching_figures.plot_patching(noise)
    assert figure.data[0].zmax == head_figures.NOISE_FLOOR and figure.data[0].zmin == -head_figures.NOISE_FLOOR
    assert figure.data[0].colorbar.title.text == "normalised logit difference"  # as on the per-head maps
    real = head_figures.plot_head_heatmap([[0.4, -0.2], [0.1, 0.0]], "t")
    assert real.data[0].zmax == 0.4 and list(real.layout.xaxis.dtick for _ in [0]) == [1]


def test_the_runner_adds_the_static_image_a_kernel_left_out(tmp_path: Path) -> None:
    """In the runner's kernels figures are stored as plotly JSON alone, and the runner draws their PNGs
    while the next template runs: the notebook ends as the kernel's own renderer would have left it."""
    import nbformat

    from helpers.figures import images

    figure = head_figures.plot_head_heatmap([[0.4, -0.2], [0.1, 0.0]], "t")
    bundle = {images.PLOTLY_MIME: figure.to_plotly_json()}
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("fig", outputs=[
        nbformat.v4.new_output("display_data", data=bundle)])])
    path = tmp_path / "n.ipynb"
    nbformat.write(notebook, path)
    assert images.add_static_images(path) == 1 and images.add_static_images(path) == 0  # once per figure
    [output] = nbformat.read(path, as_version=4).cells[0].outputs
    assert set(output.data) == {images.PLOTLY_MIME, "image/png"}
    assert output.data["image/png"] == images.StaticImageRenderer().to_mimebundle(figure.to_plotly_json())["image/png"]


def test_the_runner_draws_an_attention_views_image_as_the_kernel_would_have(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """In the runner's kernels an attention view leaves its static image to the runner too: after the
    runner's pass its output is the one a kernel drawing the image itself gives, byte for byte."""
    import nbformat

    from helpers.analyses.dla import AttentionPatterns
    from helpers.figures import images, viz

    patterns = torch.tensor([[[1.0, 0.0, 0.0], [0.3, 0.7, 0.0], [0.2, 0.5, 0.3]],
                             [[1.0, 0.0, 0.0], [0.9, 0.1, 0.0], [0.6, 0.1, 0.3]]])
    result = AttentionPatterns((HeadScore(0, 1, 0.5), HeadScore(1, 0, 0.2)), ("When", " Mary", " and"), patterns, "p")

    def output() -> dict[str, Any]:
        data, metadata = viz.attention_view(result)._repr_mimebundle_()
        return nbformat.v4.new_output("display_data", data=data, metadata=metadata)

    monkeypatch.delenv(images.STATIC_IMAGES_BY_RUNNER, raising=False)
    drawn = output()
    monkeypatch.setenv(images.STATIC_IMAGES_BY_RUNNER, "1")
    left = output()
    assert images.PENDING_PNG in left.data["text/html"] and images.PENDING_FIGURE_METADATA in left.metadata
    assert images.PENDING_PNG not in drawn.data["text/html"] and 'src="data:image/png;base64,' in drawn.data["text/html"]
    path = tmp_path / "n.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("view", outputs=[left])]), path)
    assert images.add_static_images(path) == 1 and images.add_static_images(path) == 0
    [finished] = nbformat.read(path, as_version=4).cells[0].outputs

    def unnamed(html: str) -> str:  # CircuitsVis names each view's element at random
        return re.sub(r"circuits-vis-[0-9a-f-]+", "circuits-vis-*", html)

    assert unnamed(finished.data["text/html"]) == unnamed(drawn.data["text/html"])
    assert set(finished.data) == {"text/html"} and finished.metadata == drawn.metadata


def test_copy_score_table_leaves_the_shorter_side_empty() -> None:
    """Only heads above 0% are listed, so one side can be shorter (it raised on a GPT-2-shaped model with
    random weights, where fewer heads copy negatively than positively)."""
    from helpers.analyses.copy_scores import CopyInputs, CopyScores

    in_top = torch.zeros(2, 2, 2, dtype=torch.bool)
    in_top[0, 1] = True  # L0H1 copies both words, L1H0 one
    in_top[1, 0, 0] = True
    negative = torch.zeros(2, 2, 2, dtype=torch.bool)
    negative[0, 0, 0] = True  # only L0H0 copies negatively
    inputs = CopyInputs(prompt_index=torch.tensor([0, 0]), position=torch.tensor([1, 2]), token=torch.tensor([5, 6]),
                        roles=("IO", "S"), str_tokens=(" A", " B"))
    table = copy_scores_figures.copy_score_table(CopyScores(in_top, negative, inputs, k=5), 5)
    assert list(table["copying head"]) == ["L0H1", "L1H0"] and list(table.index) == [1, 2]
    assert table["negative head"].tolist()[0] == "L0H0" and table["negative copy score"].isna().tolist() == [False, True]
