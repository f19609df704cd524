"""The tested library behind the circuit-analysis notebook templates.

Dependencies point one way: ``paths``, ``tasks`` and ``model`` at the bottom; ``hooks``, ``metrics``
and ``heads``; the analyses (``attribution``, ...); ``plotting`` and ``viz`` for figures; ``session``
and ``results`` for templates; ``run`` (the command line) on top.
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
