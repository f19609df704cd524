"""The tested library behind the circuit-analysis notebook templates.

The subpackages are the flow of a run, and each imports only from those above it in this list (tests/
test_layout.py holds every import to it, function-level ones included, and refuses a cycle):

    errors, paths, results   what everything shares: the suite's errors, its folders, the results.json format
        |
    tasks/        a task file -> TaskSpec (spec) -> PromptSet (prompts) with its AnswerMetric (metrics)
        |
    models/       where a model comes from (sources), loading it (load), what its architecture is
        |         (architectures), the engine's forward pass (forward), hooks that must fire (hooks), toys
    analyses/     one module per analysis (dla, head_functions, copy_scores, neurons, vectors, ...), with
        |         patching/ (the exact engine, attribution patching, the hook route) and circuits/ (head
        |         circuits, the graph of edges, discovery, head roles); heads and stats are shared
    figures/      one module of plotly figures per analysis (dla, patching, ..., on heads' building blocks),
        |         their static images (static, images), notebook display (viz)
        |
    notebook/     what a template starts with (session) and the Colab set-up (colab)
        |
    run/          the command line (cli), what a run will do (plan), running and landing it (execute), the
                  cross-task comparison, the kernel, the output folders and the offline pages (export)

Templates call ``notebook``, ``analyses``, ``figures`` and ``results``; nothing here imports from
``tests/`` or reads a template except ``run``, which executes them.
"""

import sys
import warnings

# tqdm.auto warns, inside every notebook, that Jupyter widgets are missing; its text bars are what we want.
warnings.filterwarnings("ignore", message="IProgress not found")

# jsonschema (which nbformat, papermill and helpers.results use) imports rfc3987_syntax when it is
# installed (jupyter-events asks for it, for the "iri" string formats): that module compiles 38 grammars on
# import, 3-6 s on 2 cores, in the command line and again in every kernel. Nothing here checks an "iri"
# format, so it is never imported: jsonschema then leaves those two formats unchecked.
if "rfc3987_syntax" not in sys.modules:
    sys.modules["rfc3987_syntax"] = None  # type: ignore[assignment]
