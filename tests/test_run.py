"""The runner end to end: papermill executes the templates on the toy model into notebooks/<task>/."""

from __future__ import annotations

import base64
import html
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nbformat
import pytest
import torch
from checks import FLOAT32_PATCHING, assert_matches, run_dir
from fake_templates import GOOD_TEMPLATE, saving, stamps, write_templates
from nbformat.sign import NotebookNotary
from reference import hook_neuron_patching, hook_update_vector_top_share, normalised_task_metric

from helpers import results as results_format
from helpers.figures import images, viz
from helpers.models.load import load_tokenizer
from helpers.paths import PARAMS_DIR, REPO_ROOT, TEMPLATES_DIR
from helpers.run import cli, comparison, export
from helpers.run import execute as running
from helpers.run import plan as planning
from helpers.tasks.prompts import TaskError, build_prompts, load_task


@pytest.fixture(scope="module")
def successful_run(two_task_run: tuple[Path, list[str], int], toy_model_dir: Path) -> tuple[Path, list[str], int]:
    notebooks, lines, code = two_task_run
    return run_dir(notebooks, "ioi", toy_model_dir), lines, code


# Plotly figures each executed template shows, at least (on the 2-layer toy model).
PLOTS_AT_LEAST = {"dla": 4, "patching": 4, "head_functions": 4, "copy_scores": 4, "circuit_discovery": 4, "circuit": 4,
                  "mlp_neurons": 5,
                  "vector_arithmetic": 2}


def outputs_of(path: Path) -> list[Any]:
    """Every output of an executed notebook's code cells."""
    return [o for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code" for o in c.outputs]


def error_outputs(path: Path) -> list[Any]:
    return [o for o in outputs_of(path) if o.output_type == "error"]


@pytest.mark.slow
def test_run_writes_executed_notebooks_and_results(successful_run: tuple[Path, list[str], int]) -> None:
    out, lines, code = successful_run
    assert code == 0, "\n".join(lines)
    notebooks = ["circuit.ipynb", "circuit_discovery.ipynb", "copy_scores.ipynb", "dla.ipynb", "head_functions.ipynb",
                 "mlp_neurons.ipynb", "patching.ipynb", "vector_arithmetic.ipynb"]
    pages = [name.replace(".ipynb", ".html") for name in notebooks]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        notebooks + pages + ["results.json", "circuit.json", "index.html", "README.md"])
    for name in notebooks:
        assert error_outputs(out / name) == [], name
    assert running.over_size_budget(out, [n.removesuffix(".ipynb") for n in notebooks]) == []  # each within 10 MB
    assert not [line for line in lines if "weigh more than" in line]
    results = json.loads((out / "results.json").read_text())
    for path in sorted(out.parent.rglob("results.json")):  # every results file, as a strict parser reads it
        data = json.loads(path.read_text(), parse_constant=lambda constant, path=path: pytest.fail(f"{path} holds {constant}"))
        results_format.check_file(data)  # and follows helpers/results.schema.json
    dla = results["templates"]["dla"]
    assert dla["additivity"]["ok"] is True
    assert len(dla["logit_diff"]["per_prompt"]) == 8
    assert abs(dla["components"]["sum_of_mean"] - dla["logit_diff"]["mean"]) < 1e-4
    head_means = [value for row in dla["heads"]["mean"] for value in row]
    for sign, listed in ((1, dla["heads"]["top_positive"]), (-1, dla["heads"]["top_negative"])):
        # only heads of that sign, every one of them (8 heads, fewer than the default 10), strongest first
        assert sorted((h["value"] for h in listed), key=lambda v: -sign * v) == [h["value"] for h in listed]
        assert sorted(h["value"] for h in listed) == sorted(v for v in head_means if sign * v > 0)
    assert {"head", "layer", "head_index", "value", "ci95"} <= set(dla["heads"]["top_positive"][0])
    low, high = dla["logit_diff"]["ci95"]
    assert low < dla["logit_diff"]["mean"] < high
    patching = results["templates"]["patching"]
    assert patching["metric"]["clean_metric"] == 1.0 and abs(patching["metric"]["corrupted_metric"]) < 1e-6
    assert patching["metric"]["engine"] == "fast path"
    assert len(patching["head_out"]["values"]) == 2 and len(patching["head_out"]["values"][0]) == 4
    assert patching["head_out"]["top_positive"][0]["value"] == max(max(row) for row in patching["head_out"]["values"])
    for listed, sign in ((patching["head_out"]["top_positive"], 1), (patching["head_out"]["top_negative"], -1)):
        assert all(sign * h["value"] > 0 and h["ci95"][0] <= h["value"] <= h["ci95"][1] for h in listed)
    assert [a["kind"] for a in patching["attribution_agreement"]] == ["head_out", "head_v", "head_pattern"]
    assert len(patching["resid_pre"]["columns"]) == len(patching["resid_pre"]["values"][0])
    heads = results["templates"]["head_functions"]
    assert heads["importance_source"] == "earlier notebooks of this run"
    assert heads["ablation"]["head"]["head"] == dla["heads"]["top_positive"][0]["head"]  # ablate_by = "dla"
    assert set(heads["role_scores"]) >= {"previous_token", "duplicate_token", "induction"}
    assert {h["group"] for h in heads["important_heads"]} <= {"early", "middle", "late"}
    copying = results["templates"]["copy_scores"]
    assert copying["copy_scores"]["k"] == 5 and copying["copy_scores"]["n_inputs"] == 8 * 5  # IO, S twice, PLACE, OBJECT
    assert len(copying["copy_scores"]["copy"]["values"]) == 2 and len(copying["copy_scores"]["negative"]["values"][0]) == 4
    assert copying["importance_source"] == "earlier notebooks of this run"
    assert {s["head"] for s in copying["attention_vs_projection"]} >= {dla["heads"]["top_positive"][0]["head"]}
    assert all(-1 <= s["pearson_r"] <= 1 and s["n_points"] == 8 * 4 for s in copying["attention_vs_projection"])
    assert [p["head"] for p in copying["copy_predictions"]] == [h["head"] for h in copying["copy_scores"]["copy"]["top"][:3]]
    circuit = results["templates"]["circuit"]
    assert circuit["reference"] == "the task's corrupted prompts"
    values = patching["head_out"]["values"]
    by_magnitude = sorted(((layer, head) for layer in range(2) for head in range(4)), key=lambda h: -abs(values[h[0]][h[1]]))
    fractions = circuit["curve"]["fractions"]
    assert len(fractions) == 9 and fractions[-1] == 1.0  # curve_max 20, but 8 heads: all kept at the end
    # the candidate: the smallest prefix of the heads by output patching that keeps 80% of the full model
    size = circuit["choice"]["size"]
    assert circuit["choice"]["target"] == 0.8 and circuit["choice"]["reached"] is True
    assert fractions[size] >= 0.8 and all(f < 0.8 for f in fractions[1:size]) and (size == 1 or fractions[0] < 0.8)
    assert circuit["candidate"]["circuit"]["name"] == f"top {size} by output patching"
    assert [(h["layer"], h["head_index"]) for h in circuit["candidate"]["circuit"]["heads"]] == by_magnitude[:size]
    assert circuit["candidate"]["faithfulness"] == fractions[size] and len(circuit["minimality"]["heads"]) == size
    low, high = circuit["candidate"]["ci95"]
    assert low <= circuit["candidate"]["faithfulness"] <= high
    assert [c["circuit"]["name"] for c in circuit["comparison"]] == [f"top {size} by output patching"]
    baseline = circuit["random_baseline"]
    assert baseline["size"] == size and baseline["seeds"] == [0, 1, 2, 3, 4] and len(baseline["faithfulness"]) == 5
    assert baseline["min"] <= baseline["mean"] <= baseline["max"]
    discovery = results["templates"]["circuit_discovery"]
    assert set(discovery["roles"]) == {f"L{layer}H{head}" for layer in range(2) for head in range(4)}  # every head
    assert all(r["evidence"] for r in discovery["roles"].values())  # never a label without evidence
    assert all(abs(e["score"]) >= 0.1 and e["method"] == "path_patching" for e in discovery["edges"])
    assert [c["method"] for c in discovery["faithfulness_curves"]] == ["EAP", "EAP-IG (5 steps)", "exact patching"]
    assert all(c["faithfulness"][-1] == pytest.approx(1.0, abs=1e-4) for c in discovery["faithfulness_curves"])
    assert set(discovery["ablation_kinds"]) == {"resample", "mean", "zero"} and discovery["circuit_file"] == "circuit.json"
    written = json.loads((out / "circuit.json").read_text())
    assert written["cfg"]["n_layers"] == 2 and set(written["roles"]) == set(discovery["roles"])
    # the file holds the proposed circuit as in_graph, in MIB's spelling: the walk's edges, the input edges of
    # the inputs its threshold closed, and the EAP-IG edges the proposal added
    in_graph = {name for name, edge in written["edges"].items() if edge["in_graph"]}
    proposed = discovery["proposed_circuit"]
    assert len(in_graph) == proposed["edges"] == proposed["walked_edges"] + proposed["added_eap_ig_edges"]

    def mib(name: str) -> str:
        return re.sub(r"^L(\d+)H(\d+)$", r"a\1.h\2", re.sub(r"^MLP(\d+)$", r"m\1", name))

    walked = {f"{mib(e['sender'])}->{mib(e['receiver'])}" + (f"<{e['input']}>" if e["input"] else "")
              for e in discovery["edges"] + discovery["walk"]["input_edges"]}
    assert len(walked) == proposed["walked_edges"] and walked <= in_graph
    assert written["how_built"] == proposed["how"]
    arithmetic = results["templates"]["vector_arithmetic"]["vector_arithmetic"]
    assert arithmetic["add_at"] == [results["templates"]["vector_arithmetic"]["layer"]] and arithmetic["scale"] == 1.0
    assert len(arithmetic["top_share"]["random"]) == 5 and arithmetic["norm"] > 0
    mlp = results["templates"]["mlp_neurons"]
    assert len(mlp["neurons"]["exact"]) == 256 and len(mlp["neurons"]["top"]) == 10  # d_mlp of the toy model
    assert len(mlp["neurons"]["estimate_max_abs_by_layer"]) == 2 and 0 <= mlp["layer"] < 2
    assert [w["neuron"] for w in mlp["top_neurons"]] == [f"L{mlp['layer']}N{t['neuron']}" for t in mlp["neurons"]["top"]]
    provenance = results["provenance"]
    assert provenance["task"]["n_prompts"] == 8 and provenance["seed"] == 0
    assert "name: ioi" in provenance["task_file_contents"]
    assert provenance["packages"]["transformer-lens"].startswith("4.")
    assert any("dla: done" in line for line in lines) and any("mean logit difference" in line for line in lines)
    assert any("patching: done" in line and "s left for 6 more" in line for line in lines)  # the estimate
    assert any("patching: top heads by output patching" in line for line in lines)
    assert any("copy_scores: top copying heads" in line for line in lines)
    assert any(f"circuit: top {size} by output patching: faithfulness" in line for line in lines)


@pytest.mark.slow
def test_the_neuron_and_vector_figures_in_results_are_recomputed_by_hooks_on_the_model(
    successful_run: tuple[Path, list[str], int], toy_model: Any
) -> None:
    """Independent routes, on the same model, task and seed: each top neuron patched by a hook on
    ``hook_post``, and the update vector taken from ``hook_mlp_out`` and added at ``hook_resid_post``."""
    out, _, code = successful_run
    assert code == 0
    results = json.loads((out / "results.json").read_text())["templates"]
    prompts = build_prompts(load_task("ioi").with_overrides(n_prompts=8), toy_model.tokenizer)
    subset = prompts.for_template(0)  # the neuron notebook's default position_template
    mlp = results["mlp_neurons"]
    top = torch.tensor([t["neuron"] for t in mlp["neurons"]["top"]])
    corrupted = mlp["neurons"]["corrupted_metric"]
    recomputed = hook_neuron_patching(toy_model, subset, mlp["layer"], top, normalised_task_metric(toy_model, subset))
    reported = torch.tensor([t["effect"] for t in mlp["neurons"]["top"]])
    assert_matches(reported, recomputed - corrupted, FLOAT32_PATCHING, what="the top neurons' effects in results.json")
    arithmetic = results["vector_arithmetic"]
    norm, before, after = hook_update_vector_top_share(toy_model, prompts, component=arithmetic["component"],
                                                       layer=arithmetic["layer"], scale=1.0)
    reported_vector = arithmetic["vector_arithmetic"]
    assert reported_vector["norm"] == pytest.approx(norm, rel=1e-5)
    assert (reported_vector["top_share"]["before"], reported_vector["top_share"]["vector"]) == (before, after)


@pytest.mark.slow
@pytest.mark.parametrize("template", ["dla", "patching", "head_functions", "copy_scores", "circuit_discovery",
                                      "circuit", "mlp_neurons", "vector_arithmetic"])
def test_executed_notebook_keeps_the_questions_and_says_it_ran_on_a_toy(
    template: str, successful_run: tuple[Path, list[str], int]
) -> None:
    out, _, _ = successful_run
    nb = nbformat.read(out / f"{template}.ipynb", as_version=4)
    source = nbformat.read(TEMPLATES_DIR / f"{template}.ipynb", as_version=4)

    def questions(notebook: Any) -> list[str]:
        return [c.source for c in notebook.cells if c.cell_type == "markdown" and "**How to interpret.**" in c.source]

    assert len(questions(source)) >= 3 and questions(nb) == questions(source)
    shown = json.dumps(outputs_of(out / f"{template}.ipynb"))
    assert "TOY MODEL" in shown and "not GPT-2" in shown
    assert shown.count("application/vnd.plotly.v1+json") >= PLOTS_AT_LEAST[template]
    assert "unpkg.com" not in shown and "cdn.plot.ly" not in shown
    # where plotly.js does not run (GitHub, nbconvert), each figure is its static image
    figures = [o for o in outputs_of(out / f"{template}.ipynb") if "application/vnd.plotly.v1+json" in o.get("data", {})]
    assert figures and all({"application/vnd.plotly.v1+json", "image/png"} <= set(o["data"]) and "text/html" not in o["data"]
                           for o in figures)
    assert all(base64.b64decode(o["data"]["image/png"])[:8] == b"\x89PNG\r\n\x1a\n" for o in figures)


@pytest.mark.slow
def test_attention_views_are_inline_and_need_no_network(successful_run: tuple[Path, list[str], int]) -> None:
    out, _, _ = successful_run
    shown = json.dumps(outputs_of(out / "dla.ipynb"))
    assert "circuits-vis-" in shown and "CircuitsVis.render" in shown  # the inline view, no CDN
    # and, for a viewer that does not run its script, the same heads as an image with the reason
    views = [o["data"]["text/html"] for o in outputs_of(out / "dla.ipynb")
             if "CircuitsVis.render" in o.get("data", {}).get("text/html", "")]
    assert views and all(viz.UNTRUSTED_HINT in v and 'src="data:image/png;base64,' in v for v in views)


@pytest.mark.slow
def test_a_failing_template_keeps_it_and_leaves_earlier_results_alone(
    toy_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    templates = tmp_path / "templates"
    templates.mkdir()
    broken = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell('task = "ioi"\ndevice = "auto"\ndtype = "float32"\nresults_path = None',
                                  metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell('raise RuntimeError("planted failure")'),
    ])
    broken.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(broken, templates / "dla.ipynb")
    monkeypatch.setattr(planning, "TEMPLATES_DIR", templates)
    out = run_dir(tmp_path / "notebooks", "ioi", toy_model_dir)
    out.mkdir(parents=True)
    (out / "dla.ipynb").write_text("previous good notebook")
    (out / "results.json").write_text('{"previous": true}')

    lines: list[str] = []
    plan = planning.prepare_run("ioi", model=str(toy_model_dir), n_prompts=4, device="cpu", notebooks_dir=tmp_path / "notebooks")
    assert running.execute(plan, log=lines.append) == 1
    report = "\n".join(lines)
    assert "template 'dla'" in report and "RuntimeError: planted failure" in report and "cell [3]" in report  # as numbered in the notebook
    assert (out / "dla.ipynb").read_text() == "previous good notebook"
    assert json.loads((out / "results.json").read_text()) == {"previous": True}
    assert len(error_outputs(out / "failed" / "dla.ipynb")) == 1
    assert sorted(p.name for p in out.iterdir()) == ["dla.ipynb", "failed", "results.json"]  # no staging left


def test_a_template_that_does_not_apply_says_why_and_the_others_run(tmp_path: Path, gpt2_tokenizer: Any) -> None:
    """Gemma 2's post-attention norm couples the heads, so circuit discovery has no edges to walk: its notebook
    lands showing why (no traceback), results.json records the reason and has no section for it, and the run
    goes on (the circuit notebook says it has no circuit to read) and succeeds."""
    from helpers.models.toys import build_toy_model

    model = build_toy_model(tmp_path / "gemma2", architecture="gemma2", tokenizer=gpt2_tokenizer, seed=2)
    lines: list[str] = []
    code = running.run_tasks(["ioi"], model=str(model), n_prompts=4, device="cpu", notebooks_dir=tmp_path / "notebooks",
                             log=lines.append, templates=["circuit_discovery", "circuit"])
    assert code == 0, "\n".join(lines)
    out = run_dir(tmp_path / "notebooks", "ioi", model)
    log = "\n".join(lines)
    assert "circuit_discovery: not applicable to this model or task: gemma2: a norm after attention couples" in log
    errors = error_outputs(out / "circuit_discovery.ipynb")
    assert len(errors) == 1 and errors[0].ename == "NotApplicable"
    assert errors[0].traceback == [f"Not applicable: {errors[0].evalue}"]  # the reason alone, no traceback
    results = json.loads((out / "results.json").read_text())
    assert set(results["templates"]) == {"circuit"}
    assert "norm after attention" in results["provenance"]["template_runs"]["circuit_discovery"]["not_applicable"]
    assert "norm after attention" in results["templates"]["circuit"]["from_file"]["reason"]
    assert (out / "circuit_discovery.html").is_file() and not (out / "failed").exists()
    assert "not applicable: gemma2" in (out / "README.md").read_text()


def test_bad_task_fails_before_any_model_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    task = tmp_path / "bad.yaml"
    shutil.copy(PARAMS_DIR / "ioi.yaml", task)
    task.write_text(task.read_text().replace("n_prompts: 64", "n_prompts: lots"))
    assert cli.main(["--task", str(task), "--notebooks-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml" in err and "n_prompts" in err and "'lots'" in err and "Fix:" in err
    assert not (tmp_path / "out").exists()


def test_task_outside_params_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--task", "../ioi"]) == 2
    assert "not an existing .yaml file" in capsys.readouterr().err


def test_unknown_template_is_refused(toy_model_dir: Path) -> None:
    with pytest.raises(ValueError, match="no template named 'dlaa'"):
        planning.prepare_run("ioi", model=str(toy_model_dir), templates=["dlaa"])


def test_multi_token_answers_fail_after_the_tokenizer_loads(toy_model_dir: Path, tmp_path: Path) -> None:
    task = tmp_path / "long_names.yaml"
    text = (PARAMS_DIR / "ioi.yaml").read_text()
    task.write_text(text.replace("name: ioi", "name: long_names").replace("NAME: [Mary,", "NAME: [Xanthippe, Mary,"))
    with pytest.raises(TaskError, match="Xanthippe"):
        planning.prepare_run(str(task), model=str(toy_model_dir))


@pytest.mark.slow
def test_several_tasks_run_in_turn_and_end_with_a_summary(two_task_run: tuple[Path, list[str], int],
                                                           toy_model_dir: Path) -> None:
    notebooks, lines, code = two_task_run
    assert code == 0, "\n".join(lines)
    assert "\n=== task 2/2: greater_than ===" in lines and "\n2 of 2 tasks succeeded" in lines
    for task in ("ioi", "greater_than"):
        assert json.loads((run_dir(notebooks, task, toy_model_dir) / "results.json").read_text())["task"] == task


@pytest.mark.slow
def test_every_template_honours_a_probability_difference_metric(two_task_run: tuple[Path, list[str], int],
                                                                toy_model_dir: Path) -> None:
    notebooks, lines, _ = two_task_run
    results = json.loads((run_dir(notebooks, "greater_than", toy_model_dir) / "results.json").read_text())["templates"]
    for name in planning.TEMPLATE_ORDER:
        assert error_outputs(run_dir(notebooks, "greater_than", toy_model_dir) / f"{name}.ipynb") == [], name
    dla, patching, circuit = results["dla"], results["patching"], results["circuit"]
    assert dla["logit_diff"]["metric"] == patching["metric"]["task_metric"] == "probability difference"
    assert patching["metric"]["metric_name"] == "normalised probability difference"
    # the same clean run read by three templates: DLA's metric, patching's clean anchor, the full circuit
    assert abs(dla["logit_diff"]["metric_mean"] - patching["metric"]["clean_value"]) < 1e-5
    assert abs(circuit["candidate"]["full_metric"] - patching["metric"]["clean_value"]) < 1e-5
    assert -1 <= patching["metric"]["clean_value"] <= 1  # a probability difference, not a logit difference
    assert dla["additivity"]["ok"] is True  # DLA explains the answer sets' mean logit difference exactly
    assert any("greater_than" in line for line in lines)


@pytest.mark.slow
def test_executed_notebooks_open_unmodified_and_hold_no_progress_bars(
    successful_run: tuple[Path, list[str], int],
) -> None:
    """JupyterLab rewrites a kernelspec whose display name is not its own (the notebook then opens as
    modified); progress bars would be stored as stderr blocks. Neither happens."""
    from jupyter_client.kernelspec import KernelSpecManager

    out, _, _ = successful_run
    installed = KernelSpecManager().get_kernel_spec("python3")
    for path in sorted(out.glob("*.ipynb")):
        notebook = nbformat.read(path, as_version=4)
        assert notebook.metadata["kernelspec"] == {"display_name": installed.display_name,
                                                   "language": installed.language, "name": "python3"}, path.name
        stderr = [o.text for o in outputs_of(path) if o.output_type == "stream" and o.name == "stderr"]
        assert not [text for text in stderr if "\r" in text or "it/s" in text or "%|" in text], path.name
        # nor the kernel's own chatter (a shared kernel's input history once printed into a notebook)
        streams = [o.text for o in outputs_of(path) if o.output_type == "stream"]
        assert not [text for text in streams if "History logging" in text or "not unique in database" in text], path.name
        assert NotebookNotary().check_signature(notebook), path.name  # still trusted after the metadata change


@pytest.mark.slow
def test_the_same_task_twice_gives_identical_figures(
    two_task_run: tuple[Path, list[str], int], toy_model_dir: Path, tmp_path: Path
) -> None:
    """The first run shared one kernel between its templates, warmed up during validation (the model
    converted once, survivors frozen out of the garbage collector, pages written beside the next template);
    here every template gets a kernel of its own, with none of that: every figure of results.json is the
    same, to the bit."""
    notebooks, _, _ = two_task_run
    assert running.run_tasks(["ioi"], model=str(toy_model_dir), n_prompts=8, device="cpu", notebooks_dir=tmp_path,
                         fresh_kernels=True, log=lambda line: None) == 0
    first, again = (json.loads((run_dir(folder, "ioi", toy_model_dir) / "results.json").read_text())
                    for folder in (notebooks, tmp_path))
    assert list(again["templates"]) == planning.available_templates()
    assert first["templates"] == again["templates"]


def test_a_failing_task_does_not_stop_the_others(toy_model_dir: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    lines: list[str] = []
    code = running.run_tasks(["no_such_task", "ioi"], model=str(toy_model_dir), n_prompts=4, device="cpu",
                         templates=["dla"], notebooks_dir=tmp_path, log=lines.append)
    assert code == 1
    assert "there is no params/no_such_task.yaml" in capsys.readouterr().err
    assert "\n1 of 2 tasks succeeded; failed: no_such_task" in lines
    assert json.loads((run_dir(tmp_path, "ioi", toy_model_dir) / "results.json").read_text())["templates"]["dla"][
        "additivity"]["ok"]


def test_task_lists_are_split_on_spaces_and_commas() -> None:
    assert cli._split(["numseq months", "days,letters"]) == ["numseq", "months", "days", "letters"]


@pytest.mark.slow
def test_compare_reads_both_tasks_results(two_task_run: tuple[Path, list[str], int], toy_model_dir: Path) -> None:
    notebooks, _, _ = two_task_run
    lines: list[str] = []
    assert comparison.compare(["ioi", "greater_than"], model=str(toy_model_dir), notebooks_dir=notebooks,
                       log=lines.append) == 0
    assert not any("Running first" in line for line in lines), "both tasks had results: nothing to rerun"
    out = notebooks / f"compare@{toy_model_dir.name}"
    assert sorted(p.name for p in out.iterdir()) == ["compare.html", "compare.ipynb", "results.json"]
    assert error_outputs(out / "compare.ipynb") == []
    written = json.loads((out / "results.json").read_text())
    results_format.check_file(written)
    assert written["provenance"]["tasks"] == ["ioi", "greater_than"]
    compared = written["templates"]["compare"]
    # recompute from the tasks' own results.json: top 10 of 8 heads = every head, so the sets are equal
    maps = [json.loads((run_dir(notebooks, t, toy_model_dir) / "results.json").read_text())["templates"]["patching"][
        "head_out"]["values"]
            for t in ("ioi", "greater_than")]
    assert compared["head_sets"]["overlap"] == [[8.0, 8.0], [8.0, 8.0]] and compared["shared_heads"]["shared"]
    r = torch.corrcoef(torch.tensor([sum(m, []) for m in maps]))[0, 1]
    assert abs(compared["patching_correlations"][0][1] - float(r)) < 1e-5
    heads = compared["shared_head_scores"]
    assert set(heads) == set(compared["shared_heads"]["shared"]) and set(heads["L0H0"]) == {"ioi", "greater_than"}
    # the mean logit difference is compared only between tasks of one metric (logit vs probability difference);
    # normalised figures (output patching of a head in both tasks' top lists) between any two
    quantities = {d["quantity"] for d in compared["differences"]}
    assert "mean logit difference" not in quantities and any(q.startswith("output patching of") for q in quantities)
    for difference in compared["differences"]:
        (low_a, high_a), (low_b, high_b) = difference["intervals"]
        assert difference["beyond_noise"] == (high_a < low_b or high_b < low_a)
    shown = json.dumps(outputs_of(out / "compare.ipynb"))
    assert shown.count("application/vnd.plotly.v1+json") >= 5


def test_compare_names_the_tasks_to_run_first(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert comparison.compare(["numseq", "months"], run_missing=False, notebooks_dir=tmp_path) == 2
    assert 'make run TASK="numseq months"' in capsys.readouterr().err
    assert comparison.compare(["numseq"], notebooks_dir=tmp_path) == 2
    assert "at least two tasks" in capsys.readouterr().err


def external_references(page: str) -> list[str]:
    """Scripts, styles, images and frames a page would fetch from the network."""
    return re.findall(r"""<(?:script|link|img|iframe)\b[^>]*?(?:src|href)=["']?(?:https?:)?//[^"'\s>]+""", page)


@pytest.mark.slow
def test_each_notebook_has_an_offline_page_with_each_library_once(successful_run: tuple[Path, list[str], int]) -> None:
    out, lines, _ = successful_run
    plotly_js, circuitsvis_js = (path.read_text(encoding="utf-8")[:200] for path in export.library_sources().values())
    for notebook in sorted(out.glob("*.ipynb")):
        assert NotebookNotary().check_signature(nbformat.read(notebook, as_version=4)), \
            f"{notebook.name} is trusted by this user's Jupyter"
        outputs = outputs_of(notebook)
        figures = [o for o in outputs if export.PLOTLY_MIME in o.get("data", {})]
        views = [o for o in outputs if images.CIRCUITSVIS_METADATA in o.get("metadata", {})]
        assert all("image/png" in o["data"] for o in figures), \
            "every figure also carries a static image for viewers without plotly's renderer (GitHub, nbconvert)"
        page = notebook.with_suffix(".html").read_text(encoding="utf-8")
        assert page.count('<div class="suite-plotly"') == len(figures) >= PLOTS_AT_LEAST[notebook.stem]
        assert page.count('<div class="suite-circuitsvis"') == len(views)
        assert page.count(plotly_js) == 1 and page.count(circuitsvis_js) == (1 if views else 0)
        assert external_references(page) == [], notebook.name
    assert len([o for o in outputs_of(out / "dla.ipynb") if images.CIRCUITSVIS_METADATA in o.get("metadata", {})]) == 1
    assert any("offline pages (.html)" in line for line in lines)


@pytest.mark.slow
def test_the_index_lists_the_run_and_links_every_notebook_and_page(successful_run: tuple[Path, list[str], int]) -> None:
    out, _, _ = successful_run
    results = json.loads((out / "results.json").read_text())
    index, readme = (out / "index.html").read_text(), (out / "README.md").read_text()
    for text in (index, readme):
        assert results["provenance"]["model"] in text and results["provenance"]["finished_at"] in text
        assert results["templates"]["dla"]["summary"][0].split(";")[0] in html.unescape(text)
        for name in planning.TEMPLATE_ORDER:
            assert f"{name}.ipynb" in text and f"{name}.html" in text
    links = re.findall(r'href="([^"]+)"', index)
    assert sorted(links) == sorted([f"{n}.ipynb" for n in planning.TEMPLATE_ORDER] + [f"{n}.html" for n in planning.TEMPLATE_ORDER])
    assert all((out / link).is_file() for link in links)


@pytest.mark.slow
def test_html_re_exports_without_running(two_task_run: tuple[Path, list[str], int], toy_model_dir: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    notebooks, _, _ = two_task_run
    page = run_dir(notebooks, "greater_than", toy_model_dir) / "circuit.html"
    before = page.read_text()
    page.unlink()
    (run_dir(notebooks, "greater_than", toy_model_dir) / "index.html").unlink()
    lines: list[str] = []
    assert cli.export_html(["greater_than"], notebooks_dir=notebooks, model=str(toy_model_dir), log=lines.append) == 0
    assert page.read_text() == before and (run_dir(notebooks, "greater_than", toy_model_dir) / "index.html").is_file()
    folder = run_dir(notebooks, "greater_than", toy_model_dir)
    assert lines == [f"{folder.name}: {len(planning.TEMPLATE_ORDER)} pages written to {folder}/ with index.html and README.md"]
    assert cli.export_html(["numseq"], notebooks_dir=notebooks) == 2
    assert "holds no executed notebooks. Fix: make run TASK=numseq" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------
# Failure paths, with small templates of their own (each runs in a real kernel, in seconds)
# ---------------------------------------------------------------------------------------------------

def previous_results(out: Path) -> None:
    out.mkdir(parents=True)
    (out / "dla.ipynb").write_text("previous good notebook")
    (out / "results.json").write_text('{"previous": true}')


@pytest.mark.parametrize("body, problem", [
    ("import os\nos._exit(1)", "its kernel died"),
    ("x = 1", "ran to the end but wrote no results (dla.results.json)"),
])
def test_a_template_that_dies_or_writes_nothing_fails_and_replaces_nothing(
    body: str, problem: str, toy_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(planning, "TEMPLATES_DIR", write_templates(tmp_path / "templates", dla=body))
    out = run_dir(tmp_path / "notebooks", "ioi", toy_model_dir)
    previous_results(out)
    lines: list[str] = []
    plan = planning.prepare_run("ioi", model=str(toy_model_dir), n_prompts=2, device="cpu", notebooks_dir=tmp_path / "notebooks")
    assert running.execute(plan, log=lines.append) == 1
    report = "\n".join(lines)
    assert f"FAILED: template 'dla' {problem}" in report and "previous results" in report and "Traceback" not in report
    assert (out / "dla.ipynb").read_text() == "previous good notebook"
    assert json.loads((out / "results.json").read_text()) == {"previous": True}
    assert not [p for p in out.iterdir() if p.name.startswith(".staging")]


def test_failed_notebooks_are_cleared_by_a_later_success(toy_model_dir: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    notebooks = tmp_path / "notebooks"
    options = dict(model=str(toy_model_dir), n_prompts=2, device="cpu", notebooks_dir=notebooks)
    monkeypatch.setattr(planning, "TEMPLATES_DIR", write_templates(tmp_path / "broken", dla='raise RuntimeError("no")'))
    assert running.execute(planning.prepare_run("ioi", **options), log=lambda line: None) == 1
    assert (run_dir(notebooks, "ioi", toy_model_dir) / "failed" / "dla.ipynb").is_file()
    monkeypatch.setattr(planning, "TEMPLATES_DIR", write_templates(tmp_path / "fixed", dla=GOOD_TEMPLATE))
    assert running.execute(planning.prepare_run("ioi", **options), log=lambda line: None) == 0
    assert not (run_dir(notebooks, "ioi", toy_model_dir) / "failed").exists()
    results = json.loads((run_dir(notebooks, "ioi", toy_model_dir) / "results.json").read_text())
    assert results["templates"]["dla"]["summary"] == ["it ran", "task_name=ioi"]


def test_all_runs_every_task_in_params(toy_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from helpers.tasks import spec as taskfile

    params = tmp_path / "params"
    params.mkdir()
    for name in ("ioi", "numseq"):
        shutil.copy(taskfile.PARAMS_DIR / f"{name}.yaml", params / f"{name}.yaml")
    monkeypatch.setattr(taskfile, "PARAMS_DIR", params)
    monkeypatch.setattr(planning, "TEMPLATES_DIR", write_templates(tmp_path / "templates", dla=GOOD_TEMPLATE))
    assert cli.main(["--all", "--model", str(toy_model_dir), "--n", "2", "--device", "cpu",
                     "--notebooks-dir", str(tmp_path / "notebooks")]) == 0
    for name in ("ioi", "numseq"):
        results = json.loads((run_dir(tmp_path / "notebooks", name, toy_model_dir) / "results.json").read_text())
        assert stamps(results["templates"]["dla"])["task_name"] == name and results["provenance"]["n_prompts"] == 2


def test_a_failing_comparison_keeps_its_notebook_and_the_previous_comparison(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    notebooks = tmp_path / "notebooks"
    for task in ("ioi", "numseq"):  # results the comparison accepts, so nothing is run first
        (notebooks / task).mkdir(parents=True)
        templates = {name: {} for name in planning.COMPARED_TEMPLATES}
        (notebooks / task / "results.json").write_text(json.dumps({"templates": templates, "provenance": {"model": "m"}}))
    (notebooks / "compare").mkdir()
    (notebooks / "compare" / "results.json").write_text('{"previous": true}')
    monkeypatch.setattr(planning, "TEMPLATES_DIR", write_templates(tmp_path / "templates",
                                                             compare='raise ValueError("planted comparison failure")'))
    lines: list[str] = []
    assert comparison.compare(["ioi", "numseq"], notebooks_dir=notebooks, log=lines.append) == 1
    report = "\n".join(lines)
    assert "template 'compare' stopped in cell" in report and "ValueError: planted comparison failure" in report
    assert (notebooks / "compare" / "failed" / "compare.ipynb").is_file()
    assert json.loads((notebooks / "compare" / "results.json").read_text()) == {"previous": True}


def run_in_processes(tmp_path: Path, model: Path, names: Sequence[str], seed: int) -> list[dict[str, Any]]:
    """``python -m helpers.run`` in processes of their own, side by side: the dla template on 2 prompts."""
    started = {name: subprocess.Popen(
        [sys.executable, "-m", "helpers.run", "--task", "ioi", "--model", str(model), "--n", "2", "--seed", str(seed),
         "--templates", "dla", "--device", "cpu", "--notebooks-dir", str(tmp_path / name)],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for name in names}
    results = []
    for name, process in started.items():
        output, _ = process.communicate(timeout=600)
        assert process.returncode == 0, output
        data = json.loads((run_dir(tmp_path / name, "ioi", model) / "results.json").read_text())
        assert data["provenance"].pop("finished_at")
        dla = data["provenance"].pop("template_runs")["dla"]
        assert dla.pop("finished_at") and dla.pop("seconds") > 0  # when and how long, not what
        results.append(data)
    return results


def test_two_processes_with_the_same_seed_write_identical_results(toy_model_dir: Path, tmp_path: Path) -> None:
    """End to end on the smallest model, each run in its own process (and kernel): the same task, seed
    and model give the same results.json; SEED= reaches the prompts."""
    first, again = run_in_processes(tmp_path, toy_model_dir, ["first", "again"], seed=3)
    assert again == first
    assert first["provenance"]["seed"] == 3 and first["provenance"]["task"]["seed"] == 3
    tokenizer = load_tokenizer(str(toy_model_dir))
    seeded = {seed: build_prompts(planning.prepare_run("ioi", model=str(toy_model_dir), n_prompts=2, seed=seed).spec,
                                  tokenizer).clean_prompts for seed in (3, 4)}
    assert first["templates"]["dla"]["top_prediction"]["prompt"] == seeded[3][0] and seeded[3] != seeded[4]


def test_templates_share_a_kernel_but_never_a_namespace(toy_model_dir: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """One kernel runs a task's templates (imports and the converted model are paid for once); each
    template still starts from an empty namespace, its cells numbered from 1."""
    marker = 'import os\nleftover = 1\n' + saving(pid="os.getpid()")
    check = ('import os\nassert "leftover" not in globals(), "the previous template\'s variable is still here"\n'
             + saving(pid="os.getpid()"))
    monkeypatch.setattr(planning, "TEMPLATES_DIR", write_templates(tmp_path / "templates", dla=marker, patching=check))
    plan = planning.prepare_run("ioi", model=str(toy_model_dir), n_prompts=2, device="cpu", notebooks_dir=tmp_path / "out")
    lines: list[str] = []
    assert running.execute(plan, log=lines.append) == 0, "\n".join(lines)
    results = json.loads((run_dir(tmp_path / "out", "ioi", toy_model_dir) / "results.json").read_text())["templates"]
    assert stamps(results["dla"])["pid"] == stamps(results["patching"])["pid"]  # the same kernel process
    counts = [c.execution_count for c in nbformat.read(run_dir(tmp_path / "out", "ioi", toy_model_dir) / "patching.ipynb", as_version=4).cells
              if c.cell_type == "code"]
    assert counts == list(range(1, len(counts) + 1))


# In the kernel: resident memory in MiB, and a template's worth of small tensors freed but left in the heap
# (a 16 MB tensor freed first raises glibc's mapping threshold, so the 1 MB ones that follow come from the
# heap; one kept past the namespace's reset, at the heap's top, stops free() trimming the heap on its own).
_RSS = 'int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1]) // 1024'
_FREED_BUT_RESIDENT = ("import torch, helpers\nx = torch.ones(4 << 20)\ndel x\n"
                       "held = [torch.ones(1 << 18) for _ in range(1000)]\nhelpers._kept_past_reset = torch.ones(1 << 18)\n"
                       "before = " + _RSS + "\ndel held\n")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim: Linux only")
def test_a_template_starts_without_the_memory_its_predecessor_freed(toy_model_dir: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """What a template freed is handed back to the system before the next one starts (helpers.run.kernel
    .release_memory), so each template's peak is its own: here 1 GB of freed tensors stays resident
    through the first template and is gone when the second starts."""
    monkeypatch.setattr(planning, "TEMPLATES_DIR", write_templates(
        tmp_path / "templates", dla=_FREED_BUT_RESIDENT + saving(before="before", after=_RSS),
        patching=saving(start=_RSS)))
    plan = planning.prepare_run("ioi", model=str(toy_model_dir), n_prompts=2, device="cpu", notebooks_dir=tmp_path / "out")
    lines: list[str] = []
    assert running.execute(plan, log=lines.append) == 0, "\n".join(lines)
    results = json.loads((run_dir(tmp_path / "out", "ioi", toy_model_dir) / "results.json").read_text())["templates"]
    first, second = stamps(results["dla"]), stamps(results["patching"])
    assert int(first["after"]) > int(first["before"]) - 100  # freed, still resident (the test's premise)
    assert int(second["start"]) < int(first["after"]) - 800, (first, second)


# 100 tensors of 5 MB served after a 16 MB one was freed (which raises glibc's default threshold past
# them), every other one freed: how much of the 250 MB freed left the process at once, without a trim.
_HOLES = ("import torch\nx = torch.ones(4 << 20)\ndel x\nheld = [torch.ones(5 << 18) for _ in range(100)]\n"
          "before = " + _RSS + "\ndel held[::2]\nprint(before - " + _RSS + ")\n")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mapping threshold: Linux only")
def test_the_kernel_hands_freed_activation_sized_tensors_back_at_once() -> None:
    """In the templates' kernel (its environment, helpers.run.kernel.kernel_environment) a freed tensor of
    4 MB or more leaves the process when it is freed, even in a hole between live ones; with glibc's
    default threshold it stays resident until a trim."""
    from helpers.run.kernel import kernel_environment

    def released(env: dict[str, str]) -> int:
        done = subprocess.run([sys.executable, "-c", _HOLES], env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return int(done.stdout.strip())

    default = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    assert released(default) < 50  # the premise: by default the holes stay resident
    assert released(kernel_environment()) > 200


def test_the_kernel_converts_the_model_while_the_task_is_validated(toy_model_dir: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The run's kernel imports the helpers and converts the task's model while the command line validates
    the task (the warm-up): the first template's session finds that very model. What survives the warm-up
    and each reset is frozen out of the garbage collector's walks (helpers.run.kernel)."""
    first = ("import gc\nfrom helpers.models import load as models\nfrom helpers.notebook.session import start_session\n"
             "kept = list(models._KEPT.values())\nsession = start_session(task, device=device, dtype=dtype)\n"
             + saving(warmed="len(kept) == 1 and kept[0] is session.model", frozen="gc.get_freeze_count() > 0"))
    monkeypatch.setattr(planning, "TEMPLATES_DIR", write_templates(tmp_path / "templates", dla=first, patching=GOOD_TEMPLATE))
    assert planning.loads_model(["dla"]) and not planning.loads_model(["patching"])
    assert running.run_tasks(["ioi"], model=str(toy_model_dir), n_prompts=2, device="cpu", notebooks_dir=tmp_path / "out",
                         log=lambda line: None) == 0
    section = json.loads((run_dir(tmp_path / "out", "ioi", toy_model_dir) / "results.json").read_text())["templates"]["dla"]
    assert stamps(section) == {"warmed": "True", "frozen": "True"}
