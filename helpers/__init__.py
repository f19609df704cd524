"""The tested library behind the circuit-analysis notebook templates.

Dependencies point one way: ``paths``, ``tasks`` and ``model`` at the bottom; ``hooks``, ``metrics``
and ``heads``; the analyses (``attribution``, ...); ``plotting`` and ``viz`` for figures; ``session``
and ``results`` for templates; ``run`` (the command line) on top.
"""

import warnings

# tqdm.auto warns, inside every notebook, that Jupyter widgets are missing; its text bars are what we want.
warnings.filterwarnings("ignore", message="IProgress not found")
