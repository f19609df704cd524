"""``make sweep``: every task x model pair as a Ray job on a local Ray with 2 workers (offline), one pair
failing on purpose; the rerun skipping what is current; the comparison across models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nbformat
import pytest
import yaml

from helpers.models.toys import build_toy_model, planted_sequence_task
from helpers.paths import model_slug, run_folder_name
from helpers.run import cli
from helpers.run import sweep as sweeping
from helpers.run.outputs import output_name

TEMPLATES = ["dla", "circuit_discovery"]


@pytest.fixture(scope="module")
def sweep_setup(tmp_path_factory: pytest.TempPathFactory, gpt2_tokenizer: Any, toy_model_dir: Path) -> dict[str, Any]:
    """Two tasks (IOI, and months with one short template) and two toy models, the second with a context of
    12 positions, too short for IOI's prompts: that pair fails, the other three run."""
    root = tmp_path_factory.mktemp("sweep")
    months = planted_sequence_task(n_prompts=8)
    months.update(name="short_months", templates=months["templates"][1:],
                  corrupted={"templates": months["corrupted"]["templates"][1:]})
    task_file = root / "short_months.yaml"
    task_file.write_text(yaml.safe_dump(months), encoding="utf-8")
    short = build_toy_model(root / "short-context", tokenizer=gpt2_tokenizer, weight_std=0.3, n_ctx=12, seed=1)
    return {"root": root, "tasks": ["ioi", str(task_file)], "models": [str(toy_model_dir), str(short)],
            "notebooks": root / "notebooks"}


@pytest.fixture(scope="module")
def swept(sweep_setup: dict[str, Any]) -> dict[str, Any]:
    lines: list[str] = []
    code = sweeping.sweep(sweep_setup["tasks"], sweep_setup["models"], cpus_per_job=1, notebooks_dir=sweep_setup["notebooks"],
                          log=lines.append, templates=TEMPLATES, n_prompts=4, device="cpu")
    return {"code": code, "log": "\n".join(lines)}


def folder(setup: dict[str, Any], task: str, model: str) -> Path:
    return setup["notebooks"] / run_folder_name(task, model, "gpt2")


@pytest.mark.slow
def test_every_pair_runs_as_make_run_would_and_the_failing_one_is_reported(
        sweep_setup: dict[str, Any], swept: dict[str, Any]) -> None:
    good, short = sweep_setup["models"]
    assert swept["code"] == 1, swept["log"]  # one pair failed
    log = swept["log"]
    assert "sweep: 4 pairs (2 tasks x 2 models), 0 current" in log
    failed = f"ioi x {short}: FAILED: "
    assert failed in log and "reads at most 12" in log.split(failed)[1].splitlines()[0]
    assert "sweep: 3 of 4 pairs succeeded; failed:" in log
    assert "sweep: 3 done, 0 running, 0 waiting, 1 failed of 4" in log  # the progress line, at the end
    assert "2 running" in log  # two workers: two pairs at once
    for task, model in (("ioi", good), ("short_months", good), ("short_months", short)):
        results = json.loads((folder(sweep_setup, task, model) / "results.json").read_text())
        assert results["provenance"]["model"] == model and set(results["templates"]) == set(TEMPLATES)
        assert folder(sweep_setup, task, model).name == f"{task}@{model_slug(model)}"
    assert not (folder(sweep_setup, "ioi", short) / "results.json").exists()
    assert (folder(sweep_setup, "ioi", short) / "failed").is_dir() is False  # it failed before any template ran


@pytest.mark.slow
def test_the_sweep_ends_with_a_comparison_across_tasks_and_models(sweep_setup: dict[str, Any], swept: dict[str, Any]) -> None:
    good, short = sweep_setup["models"]
    out = sweep_setup["notebooks"] / "sweep"
    results = json.loads((out / "results.json").read_text())["templates"]["sweep"]
    assert results["models"] == [good, short] and results["tasks"] == ["ioi", "short_months"]
    assert sorted((p["task"], p["model"]) for p in results["pairs"]) == sorted(
        [("ioi", good), ("short_months", good), ("short_months", short)])
    for pair in results["pairs"]:  # each figure as the pair's own results.json has it
        own = json.loads((folder(sweep_setup, pair["task"], pair["model"]) / "results.json").read_text())["templates"]
        proposal = own["circuit_discovery"]["proposed_circuit"]
        assert pair["circuit_edges"] == proposal["edges"]
        assert pair["faithfulness"] == proposal["faithfulness"]["resample"]["faithfulness"]
        assert pair["clean_metric"] == own["dla"]["logit_diff"]["mean"]
        assert pair["roles"] == {h: r["role"] for h, r in own["circuit_discovery"]["roles"].items() if r["role"] != "unknown"}
    # on the good model both tasks ran: the overlap of a task with itself is 1 where it has edges
    overlap = results["task_overlap"][good]
    assert overlap[0][0] == 1.0 and overlap[1][1] == 1.0 and overlap[0][1] == overlap[1][0]
    assert results["task_overlap"][short][0] == [None, None]  # ioi did not run there
    notebook = nbformat.read(out / "sweep.ipynb", as_version=4)
    assert not [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert (out / "sweep.html").is_file()


@pytest.mark.slow
def test_a_rerun_skips_the_pairs_whose_results_are_current(sweep_setup: dict[str, Any], swept: dict[str, Any]) -> None:
    good, short = sweep_setup["models"]
    written = {(t, m): (folder(sweep_setup, t, m) / "results.json").stat().st_mtime_ns
               for t, m in (("ioi", good), ("short_months", good), ("short_months", short))}
    lines: list[str] = []
    code = sweeping.sweep(sweep_setup["tasks"], sweep_setup["models"], notebooks_dir=sweep_setup["notebooks"],
                          log=lines.append, templates=TEMPLATES, n_prompts=4, device="cpu", compare=False)
    log = "\n".join(lines)
    assert code == 1 and "sweep: 4 pairs (2 tasks x 2 models), 3 current" in log
    assert log.count("current, skipped") == 3 and f"ioi x {short}: FAILED" in log  # the failed pair is tried again
    assert {k: (folder(sweep_setup, *k) / "results.json").stat().st_mtime_ns for k in written} == written
    # another number of prompts is another run: nothing is current
    pairs = sweeping.plan_pairs(sweep_setup["tasks"], sweep_setup["models"], notebooks_dir=sweep_setup["notebooks"])
    from helpers.run.execute import git_commit

    current = [sweeping.current_results(p, templates=TEMPLATES, dtype="float32", n_prompts=n, seed=None,
                                        commit=git_commit()) for n in (4, 5) for p in pairs]
    assert current == [True, False, True, True] + [False] * 4


def test_bad_sweeps_fail_before_ray_starts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nmodel: gpt2\ntemplates: ['[X] said']\n", encoding="utf-8")
    assert sweeping.sweep([str(bad)], ["gpt2"], notebooks_dir=tmp_path) == 2
    assert "bad.yaml" in capsys.readouterr().err
    assert sweeping.sweep(["ioi"], [], notebooks_dir=tmp_path) == 2
    assert "MODELS=" in capsys.readouterr().err
    assert sweeping.sweep(["ioi", "ioi"], ["gpt2"], notebooks_dir=tmp_path) == 2
    assert "TASKS: ioi listed more than once" in capsys.readouterr().err
    assert sweeping.sweep(["ioi"], ["gpt2"], notebooks_dir=tmp_path, cpus_per_job=0.0) == 2
    assert "CPUS_PER_JOB=0" in capsys.readouterr().err
    assert cli.main(["--sweep", "ioi", "--notebooks-dir", str(tmp_path)]) == 2  # no --models
    assert not list(tmp_path.glob("*/results.json"))


def test_the_progress_line_counts_and_estimates() -> None:
    lines: list[str] = []
    progress = sweeping.Progress(5, 2, lines.append)
    assert progress.line() == "sweep: 0 done, 2 running, 3 waiting, 0 failed of 5"
    pair = sweeping.Pair("ioi", "ioi", "gpt2", Path("notebooks/ioi"))
    progress.record(sweeping.PairOutcome(pair, "current"))
    progress.record(sweeping.PairOutcome(pair, "done", seconds=60.0))
    progress.record(sweeping.PairOutcome(pair, "failed", seconds=20.0, reason="planted"))
    # 2 left on 2 slots: one round of the mean time (40 s)
    assert lines[-1] == "sweep: 1 done, 2 running, 0 waiting, 1 failed, 1 current (skipped) of 5; about 40 s left"
    assert "  ioi x gpt2: FAILED: planted -> notebooks/ioi" in lines


def test_each_model_has_a_folder_of_its_own(toy_model_dir: Path) -> None:
    """The task file's own model writes notebooks/<task>/; any other notebooks/<task>@<model>/, by hub name or
    by the local directory's name; the commands find a run by task and model, or by its folder's name."""
    assert run_folder_name("ioi", "gpt2", "gpt2") == "ioi"
    assert run_folder_name("ioi", "EleutherAI/pythia-160m", "gpt2") == "ioi@EleutherAI--pythia-160m"
    assert run_folder_name("ioi", str(toy_model_dir), "gpt2") == f"ioi@{toy_model_dir.name}"
    assert output_name("ioi", "EleutherAI/pythia-160m") == "ioi@EleutherAI--pythia-160m"
    assert output_name("ioi@EleutherAI--pythia-160m") == "ioi@EleutherAI--pythia-160m"
    assert output_name("ioi", "gpt2") == "ioi" and output_name("compare", "demo") == "compare@demo"
