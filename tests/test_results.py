"""results.json has one owner, helpers/results.py with helpers/results.schema.json: every template's
save cell writes exactly the keys its schema section lists, a key no reader knows is refused where it
is written, a path no template writes is refused where it is read, and every file is versioned."""

from __future__ import annotations

import ast
import inspect
import json
import math
import textwrap
from pathlib import Path
from typing import Any

import nbformat
import pytest
from fake_templates import minimal_section

from helpers import results as results_format
from helpers.analyses import compare
from helpers.notebook import reports
from helpers.paths import TEMPLATES_DIR
from helpers.results import ResultsFormatError
from helpers.run import outputs

TEMPLATES = sorted(p.stem for p in TEMPLATES_DIR.glob("*.ipynb"))


def _is_save_call(node: ast.AST) -> bool:
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    return getattr(func, "id", None) == "save_template_results" or (
        isinstance(func, ast.Attribute) and func.attr == "save" and getattr(func.value, "id", None) == "reports")


def _returned_keys(function: Any) -> list[str]:
    """The keys of the dict literal ``function`` returns, read from its source."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    returned = [node.value for node in ast.walk(tree) if isinstance(node, ast.Return)]
    assert len(returned) == 1 and isinstance(returned[0], ast.Dict), f"{function.__qualname__} returns one dict literal"
    return [key.value for key in returned[0].keys if isinstance(key, ast.Constant)]


def saved_keys(template: str) -> tuple[str, list[str]]:
    """The section name and the keys a template's save cell writes, read from source, not from a run: the
    report it passes to ``reports.save`` (its ``template`` and the dict its ``section`` returns), or the dict
    literal it passes to save_template_results."""
    notebook = nbformat.read(TEMPLATES_DIR / f"{template}.ipynb", as_version=4)
    calls = [node for cell in notebook.cells if cell.cell_type == "code"
             for node in ast.walk(ast.parse(cell.source)) if _is_save_call(node)]
    assert len(calls) == 1, f"{template}: one save call"
    call = calls[0]
    if isinstance(call.func, ast.Attribute):  # reports.save(results_path, reports.SomeReport(...))
        built = call.args[1]
        assert isinstance(built, ast.Call) and isinstance(built.func, ast.Attribute), f"{template}: a report is saved"
        report = getattr(reports, built.func.attr)
        return report.template, _returned_keys(report.section)
    name, section = call.args[1], call.args[2]
    assert isinstance(name, ast.Constant) and isinstance(section, ast.Dict)
    return name.value, [key.value for key in section.keys if isinstance(key, ast.Constant)]


@pytest.mark.parametrize("template", TEMPLATES)
def test_each_template_saves_exactly_the_keys_its_schema_section_lists(template: str) -> None:
    name, keys = saved_keys(template)
    assert name == template
    listed = results_format.schema()["$defs"][template]["properties"]
    assert sorted(keys + ["summary"]) == sorted(listed), f"{template}: saved {keys}, schema lists {list(listed)}"
    assert set(results_format.schema()["$defs"][template]["required"]) == set(listed)


@pytest.mark.parametrize("template", TEMPLATES)
def test_every_key_of_every_section_is_described(template: str) -> None:
    defs = results_format.schema()["$defs"]
    for key, node in defs[template]["properties"].items():
        target = defs[node["$ref"].rsplit("/", 1)[-1]] if "$ref" in node else node
        assert node.get("description") or target.get("description"), f"{template}.{key} has no description"


def test_a_key_the_readers_do_not_know_is_refused_where_it_is_written(tmp_path: Path) -> None:
    section = minimal_section("vector_arithmetic")
    results_format.save_template_results(str(tmp_path / "ok.json"), "vector_arithmetic", section, ["fine"])
    assert json.loads((tmp_path / "ok.json").read_text())["summary"] == ["fine"]
    with pytest.raises(ResultsFormatError, match=r"'vector_arithmetic'.*unknown key\(s\) 'surprise'.*Fix: save only"):
        results_format.save_template_results(str(tmp_path / "bad.json"), "vector_arithmetic",
                                             {**section, "surprise": 1}, [])
    assert not (tmp_path / "bad.json").exists()
    with pytest.raises(ResultsFormatError, match="unknown key"):  # refused by hand too (no results_path)
        results_format.save_template_results(None, "vector_arithmetic", {**section, "surprise": 1}, [])
    without_layer = {k: v for k, v in section.items() if k != "layer"}
    with pytest.raises(ResultsFormatError, match="'layer' is a required property"):
        results_format.save_template_results(None, "vector_arithmetic", without_layer, [])
    with pytest.raises(ResultsFormatError, match="layer: 1.5 is not of type 'integer'"):
        results_format.save_template_results(None, "vector_arithmetic", {**section, "layer": 1.5}, [])
    with pytest.raises(ResultsFormatError, match="no section for a template named 'my_probe'.*Fix: add"):
        results_format.save_template_results(None, "my_probe", {}, [])


def test_a_number_that_was_not_finite_is_null_with_its_reason_and_still_valid() -> None:
    section = minimal_section("dla")
    section["logit_diff"] = {**section["logit_diff"], "mean": math.nan}
    results_format.check_section("dla", {"summary": [], **section})  # null, and mean_null beside it
    assert results_format.to_jsonable(section)["logit_diff"]["mean_null"].startswith("not a number")


def test_a_path_no_template_writes_is_refused_where_it_is_read() -> None:
    data = {"templates": {"dla": {"heads": {"mean": [[1.0]]}}}}
    assert results_format.read(data, "dla", "heads", "mean") == [[1.0]]
    assert results_format.read(data, "patching", "head_out", "values") is None  # listed, absent from this file
    with pytest.raises(ResultsFormatError, match="lists no dla.heads.means"):
        results_format.read(data, "dla", "heads", "means")
    with pytest.raises(ResultsFormatError, match="no section 'dlaa'"):
        results_format.read(data, "dlaa", "heads")


def test_every_path_the_readers_use_is_in_the_schema() -> None:
    for template, path in [*compare.MEASURES.values(), *compare.SCORES.values()]:
        results_format.read({}, template, *path)
    for template, path, key, _ in compare.INTERVAL_QUANTITIES.values():
        results_format.read({}, template, *path, key)
        results_format.read({}, template, *path, "ci95")
    for template, path, _ in compare.HEAD_INTERVAL_QUANTITIES.values():
        results_format.read({}, template, *path, "top_positive")
        results_format.read({}, template, *path, "top_negative")


def test_files_are_versioned_and_a_newer_version_is_refused(tmp_path: Path) -> None:
    sections = {name: {"summary": [], **minimal_section(name)} for name in ("dla", "patching")}
    data = results_format.results_file("ioi", sections, {"model": "m", "finished_at": "now"})
    assert data["format_version"] == results_format.FORMAT_VERSION == 1
    results_format.write_json(tmp_path / "results.json", data)
    assert results_format.load(tmp_path / "results.json") == data
    (tmp_path / "newer.json").write_text(json.dumps({**data, "format_version": 2}))
    with pytest.raises(ResultsFormatError, match="format_version 2; this suite reads versions up to 1.*Fix"):
        results_format.load(tmp_path / "newer.json")
    (tmp_path / "nan.json").write_text('{"task": NaN}')
    with pytest.raises(ResultsFormatError, match="NaN"):
        results_format.load(tmp_path / "nan.json")
    with pytest.raises(ResultsFormatError, match="provenance: unknown key"):
        results_format.results_file("ioi", sections, {"modell": "m"})


def test_a_folder_of_another_format_version_is_moved_aside_not_merged(tmp_path: Path) -> None:
    out, staging = tmp_path / "ioi", tmp_path / "staging"
    out.mkdir()
    staging.mkdir()
    settings: dict[str, Any] = {"task": {"name": "ioi"}, "model": "m", "dtype": "float32", "finished_at": "t1"}
    (out / "results.json").write_text(json.dumps({"task": "ioi", "templates": {"patching": {"old": 1}},
                                                  "provenance": {**settings, "finished_at": "t0"}}))
    (out / "patching.ipynb").write_text("{}")
    for suffix in ("ipynb", "html"):
        (staging / f"dla.{suffix}").write_text("new")
    landed = outputs.land(staging, out, ["dla"], {"task": "ioi", "templates": {
        "dla": {"summary": [], **minimal_section("dla")}}, "provenance": settings}, log=lambda line: None)
    assert set(landed["templates"]) == {"dla"} and landed["format_version"] == 1
    [earlier] = (out / "earlier").iterdir()
    assert json.loads((earlier / "results.json").read_text())["templates"] == {"patching": {"old": 1}}
    assert (earlier / "patching.ipynb").is_file() and not (out / "patching.ipynb").exists()
