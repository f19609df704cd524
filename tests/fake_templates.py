"""Small templates for the runner's tests: each a parameters cell and one cell of code, executed in a
real kernel in seconds. A fake saves the smallest section its template's schema accepts (built from
helpers/results.schema.json), with what a test wants to see in its summary lines as ``key=value``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nbformat

from helpers import results


def saving(**stamps: str) -> str:
    """A template body that saves its section, with each stamp (a Python expression evaluated in the
    kernel) in the summary as ``name=value``."""
    pairs = ", ".join(f"{name!r}: {expression}" for name, expression in stamps.items())
    return ('from helpers.results import save_template_results\n'
            'save_template_results(results_path, "@NAME@", json.loads(@SECTION@), summary=["it ran"] + '
            f'[f"{{k}}={{v}}" for k, v in {{{pairs}}}.items()])')


GOOD_TEMPLATE = saving(task_name='task["name"]')


def stamps(section: dict[str, Any]) -> dict[str, str]:
    """The ``name=value`` stamps of a fake's section."""
    return dict(line.split("=", 1) for line in section["summary"] if "=" in line)


def minimal_section(template: str) -> dict[str, Any]:
    """The smallest section ``template``'s schema accepts (its summary aside): every required key, with
    an empty or zero value of its type."""
    defs = results.schema()["$defs"]

    def build(node: dict[str, Any]) -> Any:
        while "$ref" in node:
            node = defs[node["$ref"].rsplit("/", 1)[-1]]
        kind = node.get("type", "object")
        kinds = kind if isinstance(kind, list) else [kind]
        if "null" in kinds:
            return None
        if "object" in kinds:
            return {key: build(node["properties"][key]) for key in node.get("required", [])}
        return {"array": [], "string": "", "integer": 0, "number": 0.0, "boolean": False}[kinds[0]]

    section = build(defs[template])
    section.pop("summary", None)
    results.check_section(template, {"summary": [], **section})
    return section


def write_templates(folder: Path, **bodies: str) -> Path:
    """Templates named by keyword, each a parameters cell and one cell of code."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, body in bodies.items():
        if "@SECTION@" in body:
            body = "import json\n" + body.replace("@NAME@", name).replace(
                "@SECTION@", repr(json.dumps(minimal_section(name))))
        notebook = nbformat.v4.new_notebook(cells=[
            nbformat.v4.new_code_cell('task = "ioi"\ndevice = "auto"\ndtype = "float32"\nresults_path = None\n'
                                      'tasks = []\nnotebooks_dir = ""', metadata={"tags": ["parameters"]}),
            nbformat.v4.new_code_cell(body),
        ])
        notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(notebook, folder / f"{name}.ipynb")
    return folder
