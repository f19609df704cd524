"""The run around a valid task: an output folder always describes one run's settings, names cannot
collide or escape notebooks/, one run at a time writes a folder, every check that can be made before a
model runs is made then, results are strict JSON, Ctrl-C leaves nothing running, paths may hold spaces.
The templates here are small ones of the tests' own (tests/fake_templates.py), run in real kernels."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from checks import run_dir
from fake_templates import saving, stamps, write_templates

from helpers import results
from helpers.errors import RunLockedError
from helpers.models import load as model_module
from helpers.models import sources as model_sources
from helpers.paths import PARAMS_DIR, REPO_ROOT
from helpers.run import cli, outputs
from helpers.run import execute as running
from helpers.run import plan as planning
from helpers.tasks.prompts import TaskError

STAMPED = saving(task_name='task["name"]', seed='task["seed"]')


def strict(path: Path) -> Any:
    """Parse JSON as a strict parser (JavaScript's JSON.parse) would: NaN and Infinity are refused."""
    def refuse(constant: str) -> None:
        raise ValueError(f"{path} holds {constant}, which is not JSON")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)


@pytest.fixture()
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Two fast templates in the places of dla and patching."""
    folder = write_templates(tmp_path / "templates", dla=STAMPED, patching=STAMPED)
    monkeypatch.setattr(planning, "TEMPLATES_DIR", folder)
    return folder


def test_a_partial_run_merges_its_templates_and_the_index_says_which_ran_when(
    fake: Path, toy_model_dir: Path, tmp_path: Path
) -> None:
    notebooks = tmp_path / "notebooks"
    options: dict[str, Any] = dict(model=str(toy_model_dir), n_prompts=2, device="cpu", notebooks_dir=notebooks,
                                   log=lambda line: None)
    assert running.run_tasks(["ioi"], **options) == 0
    first = strict(run_dir(notebooks, "ioi", toy_model_dir) / "results.json")
    time.sleep(1.1)  # a later finished_at
    assert running.run_tasks(["ioi"], templates=["dla"], **options) == 0
    merged = strict(run_dir(notebooks, "ioi", toy_model_dir) / "results.json")
    assert set(merged["templates"]) == {"dla", "patching"}  # patching kept, not dropped
    runs = merged["provenance"]["template_runs"]
    assert runs["patching"] == first["provenance"]["template_runs"]["patching"]
    assert runs["dla"]["finished_at"] == merged["provenance"]["finished_at"] != runs["patching"]["finished_at"]
    index = (run_dir(notebooks, "ioi", toy_model_dir) / "README.md").read_text()
    assert f"| patching | {runs['patching']['finished_at']} (an earlier run, same settings) |" in index
    assert f"| dla | {runs['dla']['finished_at']} |" in index
    assert sorted(p.name for p in (run_dir(notebooks, "ioi", toy_model_dir)).glob("*.ipynb")) == ["dla.ipynb", "patching.ipynb"]


def test_a_run_estimates_what_remains_from_the_last_run_with_its_settings(
    fake: Path, toy_model_dir: Path, tmp_path: Path
) -> None:
    notebooks = tmp_path / "notebooks"
    lines: list[str] = []
    options: dict[str, Any] = dict(model=str(toy_model_dir), n_prompts=2, device="cpu", notebooks_dir=notebooks,
                                   log=lines.append)
    assert running.run_tasks(["ioi"], **options) == 0
    assert not [line for line in lines if "left for" in line]  # one template after the first: no basis yet
    took = {name: data["seconds"] for name, data in strict(run_dir(notebooks, "ioi", toy_model_dir) / "results.json")[
        "provenance"]["template_runs"].items()}
    assert set(took) == {"dla", "patching"} and all(seconds > 0 for seconds in took.values())
    lines.clear()
    assert running.run_tasks(["ioi"], **options) == 0
    said = [line for line in lines if line.startswith("[1/2] dla: done")]
    assert said and said[0].endswith(f"(the last run with these settings took {took['patching']:.0f} s for them)"), said


def test_a_run_with_other_settings_keeps_the_earlier_outputs_apart(fake: Path, toy_model_dir: Path, tmp_path: Path) -> None:
    notebooks = tmp_path / "notebooks"
    lines: list[str] = []
    options: dict[str, Any] = dict(model=str(toy_model_dir), n_prompts=2, device="cpu", notebooks_dir=notebooks)
    assert running.run_tasks(["ioi"], log=lines.append, **options) == 0
    assert running.run_tasks(["ioi"], seed=5, templates=["dla"], log=lines.append, **options) == 0
    out = run_dir(notebooks, "ioi", toy_model_dir)
    latest = strict(out / "results.json")
    assert set(latest["templates"]) == {"dla"} and stamps(latest["templates"]["dla"])["seed"] == "5"
    assert sorted(p.name for p in out.glob("*.ipynb")) == ["dla.ipynb"]  # nothing stale listed beside it
    [earlier] = list((out / "earlier").iterdir())
    assert sorted(p.name for p in earlier.glob("*.ipynb")) == ["dla.ipynb", "patching.ipynb"]
    assert stamps(strict(earlier / "results.json")["templates"]["dla"])["seed"] == "0"
    assert any("came from other settings; they are kept in" in line for line in lines)


def test_a_template_listed_twice_is_refused(toy_model_dir: Path) -> None:
    with pytest.raises(ValueError, match="TEMPLATES=dla,dla: dla listed more than once. Fix: list each template once"):
        planning.prepare_run("ioi", model=str(toy_model_dir), templates=["dla", "dla"])


@pytest.mark.parametrize("name", ["compare", "failed", "earlier"])
def test_a_task_may_not_take_a_reserved_folders_name(name: str, tmp_path: Path) -> None:
    task = tmp_path / "mine.yaml"
    task.write_text((PARAMS_DIR / "ioi.yaml").read_text().replace("name: ioi", f"name: {name}"))
    with pytest.raises(TaskError, match=f"field 'name' = '{name}': is reserved"):
        planning.prepare_run(str(task))
    with pytest.raises(TaskError, match="names one of the suite's own folders"):
        planning.prepare_run(name)


def test_html_and_lab_never_reach_outside_notebooks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    templates_before = sorted(p.name for p in (REPO_ROOT / "templates").iterdir())
    assert cli.export_html(["../templates"], notebooks_dir=tmp_path) == 2
    assert cli.open_lab("../templates", notebooks_dir=tmp_path) == 2
    assert "not an existing .yaml file" in capsys.readouterr().err
    assert sorted(p.name for p in (REPO_ROOT / "templates").iterdir()) == templates_before
    assert outputs.output_name("ioi") == "ioi" and outputs.output_name("compare") == "compare"
    assert outputs.output_name(str(PARAMS_DIR / "numseq.yaml")) == "numseq"


def test_a_second_run_of_the_same_task_is_refused_while_the_first_writes(
    fake: Path, toy_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    notebooks = tmp_path / "notebooks"
    with outputs.RunLock(run_dir(notebooks, "ioi", toy_model_dir)):  # this process plays the first run
        code = running.run_tasks(["ioi"], model=str(toy_model_dir), n_prompts=2, device="cpu", notebooks_dir=notebooks,
                             log=lambda line: None)
    assert code == 2
    err = capsys.readouterr().err
    assert f"another run (process {os.getpid()}" in err and "is writing" in err and "Fix: wait for it" in err
    assert not (run_dir(notebooks, "ioi", toy_model_dir) / "results.json").exists()
    with pytest.raises(RunLockedError):
        with outputs.RunLock(tmp_path / "x"), outputs.RunLock(tmp_path / "x"):
            pass


def test_a_lock_left_by_a_run_that_ended_is_taken_over(tmp_path: Path) -> None:
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock = tmp_path / outputs.LOCK_NAME
    lock.write_text(json.dumps({"pid": int(ended.stdout), "host": socket.gethostname(), "started": "then"}))
    with outputs.RunLock(tmp_path) as taken:
        assert json.loads(lock.read_text())["pid"] == os.getpid() and taken.held
    assert not lock.exists()


def test_a_prompt_longer_than_the_models_context_is_refused_before_it_runs(toy_model_dir: Path, tmp_path: Path) -> None:
    task = tmp_path / "long.yaml"
    long_template = "When [IO] and [S] went to the [PLACE], " + "they walked and talked, " * 40 + "[S] gave a [OBJECT] to"
    data = yaml.safe_load((PARAMS_DIR / "ioi.yaml").read_text())
    data.update(name="long", templates=[long_template], n_prompts=2)
    task.write_text(yaml.safe_dump(data))
    with pytest.raises(TaskError) as err:
        planning.prepare_run(str(task), model=str(toy_model_dir))
    message = str(err.value)
    assert "tokens, but model" in message and "reads at most 128" in message and "they walked" in message
    assert "Fix: shorten the prompt" in message


@pytest.mark.parametrize("options, message", [
    (dict(n_prompts=0), "N=0 (command line): a run needs at least 1 prompt. Fix: N=16 for a quick run, or leave N out "
                        "for the task file's 64"),
    (dict(seed=-1), "SEED=-1 (command line): seeds are whole numbers from 0. Fix: SEED=1, or leave SEED out for the "
                    "task file's 0"),
])
def test_command_line_values_are_reported_as_command_line_values(options: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError) as err:
        planning.prepare_run("ioi", **options)
    assert message in str(err.value) and "field" not in str(err.value)


def test_results_are_strict_json_with_the_reason_beside_each_null(tmp_path: Path) -> None:
    import torch

    data = {"pearson_r": math.nan, "fine": 1.5, "curve": [1.0, math.inf], "map": torch.tensor([[0.5, math.nan]]),
            "nested": {"p": -math.inf}}
    results.write_json(tmp_path / "r.json", data)
    written = strict(tmp_path / "r.json")
    assert written["pearson_r"] is None and "not a number" in written["pearson_r_null"]
    assert written["curve"] == [1.0, None] and written["curve_null"] == "infinite"
    assert written["map"] == [[0.5, None]] and "not a number" in written["map_null"]
    assert written["nested"] == {"p": None, "p_null": "infinite"} and written["fine"] == 1.5
    assert "fine_null" not in written


def test_an_unreachable_hub_is_said_once_and_the_cache_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    def unreachable(*args: Any, **kwargs: Any) -> None:
        raise OSError("no route")

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(socket, "create_connection", unreachable)
    lines: list[str] = []
    model_sources.settle_hub_access("gpt2", log=lines.append)
    assert lines == ["The Hugging Face hub (huggingface.co) cannot be reached: looking for 'gpt2' in the local "
                     "cache only."]
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    lines.clear()
    model_sources.settle_hub_access("gpt2", log=lines.append)  # already offline: nothing to do
    assert lines == []


def test_a_missing_model_names_the_offline_way_out() -> None:
    with pytest.raises(model_module.ModelLoadError, match="MODEL=demo runs the suite on its small local model"):
        model_module.load_tokenizer("no-such-org/no-such-model")


def test_a_task_path_with_spaces_is_one_task(fake: Path, toy_model_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "my tasks"
    folder.mkdir()
    shutil.copy(PARAMS_DIR / "ioi.yaml", folder / "x.yaml")
    assert cli._split([f"{folder / 'x.yaml'}"]) == [str(folder / "x.yaml")]
    assert cli._split(["numseq months", "days,letters"]) == ["numseq", "months", "days", "letters"]
    assert cli.main(["--task", str(folder / "x.yaml"), "--model", str(toy_model_dir), "--n", "2", "--device", "cpu",
                     "--templates", "dla", "--notebooks-dir", str(tmp_path / "out")]) == 0
    assert stamps(strict(run_dir(tmp_path / "out", "ioi", toy_model_dir) / "results.json")["templates"]["dla"])["task_name"] == "ioi"


def test_a_bad_task_file_is_reported_before_anything_heavy_is_imported(tmp_path: Path) -> None:
    """What makes the report fast: torch, transformers and nbformat are not imported before it."""
    task = tmp_path / "bad.yaml"
    task.write_text("name: bad\ndescription: x\nmodel: gpt2\ntemplatez: [a]\n")
    probe = ("import sys\nfrom helpers.run import cli\ncode = cli.main(['--task', sys.argv[1]])\n"
             "heavy = sorted(m for m in ('torch', 'transformers', 'nbformat', 'transformer_lens') if m in sys.modules)\n"
             "print('heavy:', heavy)\nsys.exit(code)")
    result = subprocess.run([sys.executable, "-c", probe, str(task)], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2 and "did you mean 'templates'?" in result.stderr
    assert "heavy: []" in result.stdout


def test_ctrl_c_stops_the_run_in_one_line_and_leaves_no_kernel_running(toy_model_dir: Path, tmp_path: Path) -> None:
    import psutil

    templates = write_templates(tmp_path / "templates", dla="import time\ntime.sleep(120)")
    script = tmp_path / "runner.py"
    script.write_text(f"import sys\nfrom pathlib import Path\nfrom helpers.run import cli, plan\n"
                      f"plan.TEMPLATES_DIR = Path({str(templates)!r})\nsys.exit(cli.main(sys.argv[1:]))\n")
    out = tmp_path / "notebooks"
    previous = run_dir(out, "ioi", toy_model_dir)
    previous.mkdir(parents=True)
    (previous / "results.json").write_text('{"previous": true}')
    process = subprocess.Popen(
        [sys.executable, str(script), "--task", "ioi", "--model", str(toy_model_dir), "--n", "2", "--device", "cpu",
         "--notebooks-dir", str(out)], cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    try:
        deadline = time.monotonic() + 120
        while not psutil.Process(process.pid).children(recursive=True) and time.monotonic() < deadline:
            time.sleep(0.2)
        kernels = psutil.Process(process.pid).children(recursive=True)
        assert kernels, "the run started no kernel"
        time.sleep(2)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130
    lines = [line for line in stderr.splitlines() if line.strip() and "WARNING" not in line]
    assert lines == ["interrupted: nothing of the unfinished run was kept; results written before it are intact "
                     "(every kernel it started has been stopped)"], stderr
    assert not [k for k in kernels if k.is_running() and k.status() != psutil.STATUS_ZOMBIE]
    assert json.loads((previous / "results.json").read_text()) == {"previous": True}
    assert sorted(p.name for p in previous.iterdir()) == ["results.json"]  # no staging, no lock left


def test_a_notebook_or_page_over_the_size_budget_is_named(tmp_path: Path) -> None:
    (tmp_path / "dla.ipynb").write_text("{}")
    with open(tmp_path / "dla.html", "wb") as page:
        page.truncate(running.SIZE_BUDGET_BYTES + 1)
    assert running.over_size_budget(tmp_path, ["dla", "patching"]) == ["dla.html (10.0 MB)"]
    with open(tmp_path / "dla.html", "wb") as page:
        page.truncate(running.SIZE_BUDGET_BYTES)
    assert running.over_size_budget(tmp_path, ["dla"]) == []


def test_the_command_line_estimates_what_remains() -> None:
    left = ["copy_scores", "circuit_discovery", "circuit"]
    assert running.remaining_estimate({"dla": 20.0}, left) is None  # the first template also loads the model: no basis yet
    so_far = {"dla": 20.0, "patching": 4.0, "head_functions": 6.0}
    assert running.remaining_estimate(so_far, left) == "about 15 s left for 3 more (at 5.0 s each so far)"
    assert running.remaining_estimate({"dla": 20.0, "patching": 4.0}, []) is None
    # the last run with these settings: its times for what is left, scaled as this run compares with it
    # on the templates after the first (which also waits for the model)
    before = {"dla": 30.0, "patching": 100.0, "head_functions": 4.0, "copy_scores": 20.0, "circuit_discovery": 250.0,
              "circuit": 60.0}
    assert running.remaining_estimate({"dla": 10.0, "patching": 50.0, "head_functions": 2.0}, left, before) == \
        "about 165 s left for 3 more (the last run with these settings took 330 s for them)"
    assert running.remaining_estimate({"dla": 10.0}, left, before).startswith("about 330 s left")
    # a template the last run did not time: back to the mean so far
    assert running.remaining_estimate(so_far, [*left, "new"], before) == "about 20 s left for 4 more (at 5.0 s each so far)"


def test_the_next_run_reads_each_templates_time_from_results_with_the_same_settings(tmp_path: Path) -> None:
    provenance = {"task": {"name": "ioi"}, "model": "m", "dtype": "float32", "device": "cpu", "finished_at": "t"}
    runs = {"dla": {"finished_at": "t", "seconds": 3.5}, "patching": {"finished_at": "t"}}
    written = {"format_version": results.FORMAT_VERSION, "provenance": {**provenance, "template_runs": runs}}
    (tmp_path / "results.json").write_text(json.dumps(written))
    assert outputs.earlier_seconds(tmp_path, provenance) == {"dla": 3.5}
    (tmp_path / "results.json").write_text(json.dumps({**written, "format_version": "0"}))
    assert outputs.earlier_seconds(tmp_path, provenance) == {}
    (tmp_path / "results.json").write_text(json.dumps(written))
    assert outputs.earlier_seconds(tmp_path, {**provenance, "model": "other"}) == {}
    assert outputs.earlier_seconds(tmp_path, {**provenance, "device": "cuda"}) == {}
    assert outputs.earlier_seconds(tmp_path / "none", provenance) == {}
