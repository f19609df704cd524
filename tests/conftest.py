"""Shared fixtures: GPT-2's real tokenizer and a small GPT-2-architecture model, all offline."""

from __future__ import annotations

import os
import tempfile

# Before anything imports huggingface_hub: no test may reach for the network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
# transformer_lens.patching draws a progress bar per sweep; in test logs that is noise
os.environ.setdefault("TQDM_DISABLE", "1")
# The runner trusts the notebooks it writes (a signature in Jupyter's data directory): keep the tests'
# signatures out of the user's own.
os.environ["JUPYTER_DATA_DIR"] = tempfile.mkdtemp(prefix="jupyter-data-")

from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from helpers.model import load_gpt2_tokenizer, load_model  # noqa: E402
from helpers.tasks import PromptSet, build_prompts, load_task  # noqa: E402
from helpers.toy_models import build_planted_model, build_toy_model  # noqa: E402


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def gpt2_tokenizer() -> Any:
    """GPT-2's real tokenizer: ../shared/gpt2-tokenizer on CI, the hub cache on a user's machine."""
    return load_gpt2_tokenizer()


@pytest.fixture(scope="session")
def toy_model_dir(tmp_path_factory: pytest.TempPathFactory, gpt2_tokenizer: Any) -> Path:
    """A 2-layer, 4-head, d_model 64 GPT-2 with random weights, saved like any Hugging Face model."""
    return build_toy_model(tmp_path_factory.mktemp("toy-model"), tokenizer=gpt2_tokenizer)


@pytest.fixture(scope="session")
def toy_model(toy_model_dir: Path) -> Any:
    """The toy model loaded through the same function users get."""
    return load_model(str(toy_model_dir), device="cpu")


@pytest.fixture(scope="session")
def planted(tmp_path_factory: pytest.TempPathFactory, gpt2_tokenizer: Any) -> Any:
    """The 2-layer model whose heads are set by hand (see ``helpers.toy_models.PLANTED``)."""
    directory = build_planted_model(tmp_path_factory.mktemp("planted"), tokenizer=gpt2_tokenizer)
    return load_model(str(directory), device="cpu")


@pytest.fixture(scope="session")
def ioi_prompts(toy_model: Any) -> PromptSet:
    spec = load_task("ioi").with_overrides(n_prompts=12)
    return build_prompts(spec, toy_model.tokenizer)


@pytest.fixture(scope="session")
def two_task_run(toy_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str], int]:
    """``make run TASK="ioi greater_than"`` on the toy model: a logit-difference and a probability-difference
    task, every template, into a notebooks folder of its own. Returns the folder, the log and the exit code."""
    from helpers import run

    notebooks = tmp_path_factory.mktemp("notebooks")
    lines: list[str] = []
    code = run.run_tasks(["ioi", "greater_than"], model=str(toy_model_dir), n_prompts=8, device="cpu",
                         notebooks_dir=notebooks, log=lines.append)
    return notebooks, lines, code
