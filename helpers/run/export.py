"""Executed notebooks as pages anyone can open offline, and an index of a task's run.

:func:`export_notebook` writes ``<name>.html`` beside ``<name>.ipynb``: nbconvert's JupyterLab look, with
every plotly figure and CircuitsVis attention view interactive and each JavaScript library (plotly.js,
CircuitsVis) embedded once in the page's head rather than once per figure. Each figure becomes an empty
``div`` followed by its JSON in a ``<script type="application/json">``; one small script draws them all
when the page loads. No part of the page is fetched from the network.

:func:`write_index` writes ``index.html`` and ``README.md`` for a task's folder: task, model, date, the
headline figures of every template (their ``summary`` lines in ``results.json``) and links to each
notebook and page.
"""

from __future__ import annotations

import datetime as dt
import html
import json
from pathlib import Path
from typing import Any

import nbformat

from helpers.figures.images import CIRCUITSVIS_METADATA
from helpers.notebook.colab import BADGE_TAG, SETUP_TAG
from helpers.results import write_text

PLOTLY_MIME = "application/vnd.plotly.v1+json"
TEMPLATE_DIR = Path(__file__).parent / "html"

# Draws every figure and view once the page has loaded; errors surface in the browser's console.
_RENDER_ALL = """
window.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll("div.suite-plotly").forEach(function (el) {
    var figure = JSON.parse(el.nextElementSibling.textContent);
    Plotly.newPlot(el, figure.data, figure.layout || {}, {responsive: true});
  });
  document.querySelectorAll("div.suite-circuitsvis").forEach(function (el) {
    var view = JSON.parse(el.nextElementSibling.textContent);
    CircuitsVis.render(el.id, CircuitsVis[view.component], view.props);
  });
});
"""


def library_sources() -> dict[str, Path]:
    """The JavaScript files embedded in pages, from the installed plotly and circuitsvis packages."""
    # deferred: the command line reports a bad task before importing torch, transformers or Jupyter's libraries
    import circuitsvis
    import plotly

    return {
        "plotly": Path(plotly.__file__).parent / "package_data" / "plotly.min.js",
        "circuitsvis": Path(circuitsvis.__file__).parent / "dist" / "cdn" / "iife.js",
    }


def _script(source: str) -> str:
    return "<script>\n" + source.replace("</script", "<\\/script") + "\n</script>"


def _json_script(data: Any) -> str:
    """Data in a non-executed script element; ``</`` is escaped so the JSON cannot close the element."""
    text = json.dumps(data, separators=(",", ":"), allow_nan=False).replace("</", "<\\/").replace("<!--", "<\\!--")
    return f'<script type="application/json">{text}</script>'


def page_outputs(nb: Any) -> dict[str, int]:
    """Replace each plotly figure and attention view in ``nb`` (in place) by a ``div`` and its JSON;
    return how many of each were found."""
    counts = {"plotly": 0, "circuitsvis": 0}
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            view = output.get("metadata", {}).get(CIRCUITSVIS_METADATA)
            if PLOTLY_MIME in data:
                figure = data[PLOTLY_MIME]
                height = figure.get("layout", {}).get("height", 450)
                counts["plotly"] += 1
                output["data"] = {"text/html": f'<div class="suite-plotly" id="suite-figure-{counts["plotly"]}" '
                                               f'style="width: 100%; height: {int(height)}px;"></div>'
                                               + _json_script(figure)}
            elif view is not None:
                counts["circuitsvis"] += 1
                output["data"] = {"text/html": f'<div class="suite-circuitsvis" id="suite-view-{counts["circuitsvis"]}" '
                                               'style="margin: 15px 0;"></div>' + _json_script(view)}
    return counts


def export_notebook(notebook: Path, page: Path | None = None) -> Path:
    """Write ``notebook`` as an offline HTML page (default: beside it, ``.html``); returns its path."""
    # deferred: the command line reports a bad task before importing torch, transformers or Jupyter's libraries
    from nbconvert import HTMLExporter

    page = page or notebook.with_suffix(".html")
    nb = nbformat.read(notebook, as_version=4)
    # the Colab badge and set-up cell are for opening the template in Colab, not for reading the page
    nb.cells = [c for c in nb.cells if not {BADGE_TAG, SETUP_TAG} & set(c.metadata.get("tags", []))]
    counts = page_outputs(nb)
    sources = library_sources()
    head = [_script(sources[name].read_text(encoding="utf-8")) for name in ("plotly", "circuitsvis") if counts[name]]
    head.append(_script(_RENDER_ALL))
    exporter = HTMLExporter(extra_template_basedirs=[str(TEMPLATE_DIR)], template_file="page.html.j2",
                            extra_template_paths=[str(TEMPLATE_DIR)])
    body, _ = exporter.from_notebook_node(nb, resources={"suite_head": "\n".join(head)})
    write_text(page, body)
    return page


def export_folder(folder: Path) -> list[Path]:
    """Export every notebook in ``folder`` (not its ``failed/``), then write its index if it holds a task's
    run (a ``results.json`` with per-template results)."""
    pages = [export_notebook(path) for path in sorted(folder.glob("*.ipynb"))]
    results = folder / "results.json"
    if results.is_file() and "templates" in json.loads(results.read_text(encoding="utf-8")):
        write_index(folder)
    return pages


def _size(path: Path) -> str:
    size = path.stat().st_size
    return f"{size / 1e6:.1f} MB" if size >= 1e5 else f"{size / 1e3:.0f} kB"


def index_entries(folder: Path) -> dict[str, Any]:
    """What the index shows, read from ``results.json`` and the folder's files."""
    results = json.loads((folder / "results.json").read_text(encoding="utf-8"))
    provenance = results.get("provenance", {})
    task = provenance.get("task", {})
    finished = provenance.get("finished_at")
    runs = provenance.get("template_runs", {})

    def ran(stem: str) -> str:
        when = runs.get(stem, {}).get("finished_at") or finished or "?"
        return when if when == finished else f"{when} (an earlier run, same settings)"

    return {
        "task": results.get("task", folder.name),
        "description": " ".join(str(task.get("description", "")).split()),
        "model": provenance.get("model", "?"),
        "n_prompts": provenance.get("n_prompts", "?"),
        "seed": provenance.get("seed", "?"),
        "date": finished or dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "headlines": {**{name: list(data.get("summary", [])) for name, data in results.get("templates", {}).items()},
                      **{name: [f"not applicable: {run['not_applicable']}"] for name, run in runs.items()
                         if isinstance(run, dict) and run.get("not_applicable")}},
        "notebooks": [(path.stem, path.name, _size(path),
                       path.with_suffix(".html").name if path.with_suffix(".html").is_file() else None,
                       _size(path.with_suffix(".html")) if path.with_suffix(".html").is_file() else None,
                       ran(path.stem))
                      for path in _ordered_notebooks(folder, list(results.get("templates", {})))],
    }


def _ordered_notebooks(folder: Path, order: list[str]) -> list[Path]:
    found = {p.stem: p for p in folder.glob("*.ipynb")}
    return [found[n] for n in order if n in found] + [found[n] for n in sorted(found) if n not in order]


def write_index(folder: Path) -> tuple[Path, Path]:
    """``index.html`` and ``README.md`` for a task's folder."""
    entry = index_entries(folder)
    write_text(folder / "README.md", _index_markdown(entry))
    write_text(folder / "index.html", _index_html(entry))
    return folder / "index.html", folder / "README.md"


def _index_markdown(e: dict[str, Any]) -> str:
    lines = [f"# {e['task']}", "", e["description"], "",
             f"Model `{e['model']}`, {e['n_prompts']} prompts (seed {e['seed']}), run {e['date']}.", "",
             "## Headline figures", ""]
    for name, summary in e["headlines"].items():
        lines += [f"- **{name}**: " + "; ".join(summary)] if summary else []
    lines += ["", "## Notebooks", "", "| analysis | ran | notebook | page (opens offline) |", "| --- | --- | --- | --- |"]
    for stem, notebook, nb_size, page, page_size, ran in e["notebooks"]:
        page_link = f"[{page}]({page}) ({page_size})" if page else "not exported"
        lines.append(f"| {stem} | {ran} | [{notebook}]({notebook}) ({nb_size}) | {page_link} |")
    return "\n".join(lines) + "\n"


def _index_html(e: dict[str, Any]) -> str:
    esc = html.escape
    headlines = "".join(
        f"<li><b>{esc(name)}</b><ul>{''.join(f'<li>{esc(line)}</li>' for line in summary)}</ul></li>"
        for name, summary in e["headlines"].items() if summary)
    rows = "".join(
        f"<tr><td>{esc(stem)}</td><td>{esc(ran)}</td><td><a href=\"{esc(notebook)}\">{esc(notebook)}</a> ({nb_size})</td><td>"
        + (f"<a href=\"{esc(page)}\">{esc(page)}</a> ({page_size})" if page else "not exported") + "</td></tr>"
        for stem, notebook, nb_size, page, page_size, ran in e["notebooks"])
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(e['task'])}: circuit analysis</title>
<style>body{{font-family:system-ui,sans-serif;max-width:60em;margin:2em auto;padding:0 1em;line-height:1.45}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.3em .6em;text-align:left}}</style></head>
<body><h1>{esc(e['task'])}</h1><p>{esc(e['description'])}</p>
<p>Model <code>{esc(str(e['model']))}</code>, {esc(str(e['n_prompts']))} prompts (seed {esc(str(e['seed']))}), run {esc(e['date'])}.</p>
<h2>Headline figures</h2><ul>{headlines}</ul>
<h2>Notebooks</h2><table><tr><th>analysis</th><th>ran</th><th>notebook</th><th>page (opens offline)</th></tr>{rows}</table>
</body></html>
"""
