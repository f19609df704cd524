"""Shared fixtures: GPT-2's real tokenizer and small models built in the session, all offline.

Before anything else this file isolates the tests from the machine: every cache and data directory
(Hugging Face, Jupyter, IPython) points into one temporary folder, so no test can load a model that
happens to be cached locally or write into the user's own folders; the Hugging Face hub is offline; and
the test process refuses any network connection but to this machine itself. A session-wide check
fails if a test wrote into the repository's ``notebooks/`` or ``.cache/``.
"""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

_ORIGINAL_HF_HUB_CACHE = os.environ.get("HF_HUB_CACHE") or str(
    Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub")
_ISOLATED = Path(tempfile.mkdtemp(prefix="circuit-suite-tests-"))
for variable, folder in (("HF_HOME", "huggingface"), ("JUPYTER_DATA_DIR", "jupyter-data"),
                         ("JUPYTER_RUNTIME_DIR", "jupyter-runtime"), ("JUPYTER_CONFIG_DIR", "jupyter-config"),
                         ("IPYTHONDIR", "ipython"), ("MPLCONFIGDIR", "matplotlib")):
    os.environ[variable] = str(_ISOLATED / folder)
os.environ.pop("HF_HUB_CACHE", None)
# Before anything imports huggingface_hub: no test may reach for the network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
# transformer_lens.patching draws a progress bar per sweep; in test logs that is noise
os.environ.setdefault("TQDM_DISABLE", "1")

_connect = socket.socket.connect


def _local_only(self: socket.socket, address: object) -> object:
    """Connections to this machine (kernels, the browser under test) and Unix sockets only."""
    if self.family in (socket.AF_INET, socket.AF_INET6) and isinstance(address, tuple):
        host = str(address[0])
        if host not in ("localhost", "::1") and not host.startswith("127."):
            raise ConnectionRefusedError(f"the tests may not use the network (a connection to {host} was attempted)")
    return _connect(self, address)  # type: ignore[arg-type]


socket.socket.connect = _local_only  # type: ignore[method-assign]

from typing import Any  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from helpers import paths  # noqa: E402
from helpers.models import sources as model_sources  # noqa: E402
from helpers.models.load import load_model  # noqa: E402
from helpers.models.sources import load_gpt2_tokenizer  # noqa: E402
from helpers.models.toys import build_planted_model, build_toy_model  # noqa: E402
from helpers.tasks.prompts import PromptSet, build_prompts, load_task  # noqa: E402


def _gpt2_tokenizer_dir() -> Path:
    """``../shared/gpt2-tokenizer`` on CI and the build machines; elsewhere GPT-2's tokenizer from the
    user's own Hugging Face cache (read once, explicitly), copied into the isolated folder."""
    if paths.SHARED_GPT2_TOKENIZER.is_dir():
        return paths.SHARED_GPT2_TOKENIZER
    from transformers import AutoTokenizer

    target = _ISOLATED / "gpt2-tokenizer"
    AutoTokenizer.from_pretrained("gpt2", cache_dir=_ORIGINAL_HF_HUB_CACHE).save_pretrained(target)
    return target


GPT2_TOKENIZER_DIR = _gpt2_tokenizer_dir()
# helpers falls back to the hub's GPT-2 tokenizer when ../shared has none; here it reads the copy instead
model_sources.SHARED_GPT2_TOKENIZER = GPT2_TOKENIZER_DIR


def _tree(folder: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in folder.rglob("*")} if folder.exists() else {}


@pytest.fixture(scope="session", autouse=True)
def _repository_untouched() -> Any:
    """No test writes into the repository's run outputs or caches (they belong to the user)."""
    watched = [paths.NOTEBOOKS_DIR, paths.CACHE_DIR]
    before = [_tree(folder) for folder in watched]
    yield
    for folder, snapshot in zip(watched, before):
        assert _tree(folder) == snapshot, f"a test wrote into {folder}"


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def gpt2_tokenizer() -> Any:
    """GPT-2's real tokenizer (see :func:`_gpt2_tokenizer_dir`)."""
    return load_gpt2_tokenizer(GPT2_TOKENIZER_DIR)


@pytest.fixture(scope="session")
def toy_model_dir(tmp_path_factory: pytest.TempPathFactory, gpt2_tokenizer: Any) -> Path:
    """A 2-layer, 4-head, d_model 64 GPT-2 with random weights, saved like any Hugging Face model.

    Its weights are large enough (std 0.3) that IOI's clean and corrupted runs differ by about 0.4 in
    mean logit difference and single heads move the normalised metric by 0.1-0.9: a comparison of two
    computations on it can tell a right answer from a wrong one."""
    return build_toy_model(tmp_path_factory.mktemp("toy-model"), tokenizer=gpt2_tokenizer, weight_std=0.3)


@pytest.fixture(scope="session")
def toy_model(toy_model_dir: Path) -> Any:
    """The toy model loaded through the same function users get."""
    return load_model(str(toy_model_dir), device="cpu")


@pytest.fixture(scope="session")
def planted(tmp_path_factory: pytest.TempPathFactory, gpt2_tokenizer: Any) -> Any:
    """The 2-layer model whose heads are set by hand (see ``helpers.models.toys.PLANTED``)."""
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
    from helpers.run import execute as running

    notebooks = tmp_path_factory.mktemp("notebooks")
    lines: list[str] = []
    code = running.run_tasks(["ioi", "greater_than"], model=str(toy_model_dir), n_prompts=8, device="cpu",
                         notebooks_dir=notebooks, log=lines.append)
    return notebooks, lines, code
