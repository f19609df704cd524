"""Where the project's files live, resolved from this package's location (never from the cwd)."""

from __future__ import annotations

import re
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PARAMS_DIR = REPO_ROOT / "params"
TEMPLATES_DIR = REPO_ROOT / "templates"
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
CACHE_DIR = REPO_ROOT / ".cache"

# CI and the build machines keep GPT-2's tokenizer files beside the checkout (no hub there).
SHARED_GPT2_TOKENIZER = REPO_ROOT.parent / "shared" / "gpt2-tokenizer"

# A run of a task on a model other than its task file's own lands in notebooks/<task>@<model>/.
MODEL_SEPARATOR = "@"


def model_slug(model: str) -> str:
    """A model as a folder name: a local directory by its own name, a hub name with ``/`` as ``--``
    (``EleutherAI/pythia-160m`` -> ``EleutherAI--pythia-160m``), ``demo`` as is; any other character that a
    folder name should not hold becomes ``-``."""
    path = Path(model).expanduser()
    name = path.resolve().name if path.is_dir() else model.replace("/", "--")
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "model"


def run_folder_name(task: str, model: str, own_model: str) -> str:
    """The folder in ``notebooks/`` that a run of ``task`` (a task's name) on ``model`` writes: ``<task>`` on the
    task file's own model, ``<task>@<model>`` (:func:`model_slug`) on another, so that one task's runs on
    several models sit side by side (``make run MODEL=``, ``make sweep``)."""
    def same(a: str, b: str) -> bool:
        pa, pb = Path(a).expanduser(), Path(b).expanduser()
        return a == b or (pa.is_dir() and pb.is_dir() and pa.resolve() == pb.resolve())

    return task if same(model, own_model) else f"{task}{MODEL_SEPARATOR}{model_slug(model)}"
