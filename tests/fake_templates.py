"""Small templates for the runner's tests: each a parameters cell and one cell of code, executed in a
real kernel in seconds."""

from __future__ import annotations

from pathlib import Path

import nbformat

GOOD_TEMPLATE = ('from helpers.results import save_template_results\n'
                 'save_template_results(results_path, {"task_name": task["name"]}, summary=["it ran"])')


def write_templates(folder: Path, **bodies: str) -> Path:
    """Templates named by keyword, each a parameters cell and one cell of code."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, body in bodies.items():
        notebook = nbformat.v4.new_notebook(cells=[
            nbformat.v4.new_code_cell('task = "ioi"\ndevice = "auto"\ndtype = "float32"\nresults_path = None\n'
                                      'tasks = []\nnotebooks_dir = ""', metadata={"tags": ["parameters"]}),
            nbformat.v4.new_code_cell(body),
        ])
        notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(notebook, folder / f"{name}.ipynb")
    return folder
