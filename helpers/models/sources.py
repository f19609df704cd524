"""Where a model and its tokenizer come from: a hub name (the Hugging Face hub or its cache), a local
directory, or ``demo``; the errors that say what to do when one cannot be had."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from helpers.errors import ModelLoadError
from helpers.paths import CACHE_DIR, SHARED_GPT2_TOKENIZER

DEMO_MODEL = "demo"
DEMO_MODEL_DIR = CACHE_DIR / "demo-model"


HUB_HOST = "huggingface.co"


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def settle_hub_access(name_or_dir: str, *, log: Any = print, timeout: float = 3.0) -> None:
    """Before anything asks the Hugging Face hub for a model: if the hub cannot be reached, say so in one
    line and work from the local cache (``HF_HUB_OFFLINE=1`` for this process and its kernels), rather
    than retrying for a minute with a line per retry. Nothing to do for local directories, ``demo``, or
    when already offline."""
    if hub_offline() or name_or_dir == DEMO_MODEL or Path(name_or_dir).expanduser().exists():
        return
    try:
        socket.create_connection((HUB_HOST, 443), timeout=timeout).close()
        return
    except OSError:
        pass
    log(f"The Hugging Face hub ({HUB_HOST}) cannot be reached: looking for '{name_or_dir}' in the local cache only.")
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:  # already imported: it read the variable then
        constants.HF_HUB_OFFLINE = True


def load_gpt2_tokenizer(path: str | Path | None = None) -> Any:
    """GPT-2's tokenizer from, in order: ``path``; ``../shared/gpt2-tokenizer``; the hub (or its cache).

    ``path`` may be a saved Hugging Face tokenizer directory or a directory holding GPT-2's
    ``vocab.json`` and ``merges.txt``.
    """
    # deferred: transformers takes seconds to import; only loading a tokenizer needs it
    from transformers import AutoTokenizer

    candidates = [Path(path)] if path is not None else [SHARED_GPT2_TOKENIZER]
    for directory in candidates:
        if (directory / "tokenizer_config.json").is_file():
            return AutoTokenizer.from_pretrained(str(directory))
        if (directory / "vocab.json").is_file() and (directory / "merges.txt").is_file():
            return _gpt2_tokenizer_from_bpe_files(directory)
        if path is not None:
            raise ModelLoadError(
                f"Tokenizer directory '{directory}' holds neither a saved tokenizer nor vocab.json and "
                "merges.txt. Fix: point TOKENIZER at GPT-2's tokenizer files, or leave it unset to use the hub."
            )
    with explain_load_failure("gpt2", "gpt2", what="GPT-2's tokenizer"):
        return AutoTokenizer.from_pretrained("gpt2")


def _gpt2_tokenizer_from_bpe_files(directory: Path) -> Any:
    # deferred: transformers takes seconds to import; only loading a tokenizer needs it
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE.from_file(str(directory / "vocab.json"), str(directory / "merges.txt")))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    end = "<|endoftext|>"
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=end, eos_token=end, unk_token=end)


def check_local_dir(name: str, source: str) -> None:
    path = Path(source).expanduser()
    if name.startswith((".", "/", "~")) and not path.is_dir():
        raise ModelLoadError(
            f"Model directory '{name}' does not exist. Fix: pass MODEL=/path/to/local/dir holding a model "
            "saved with save_pretrained (config.json, weights, tokenizer), or a hub name such as gpt2."
        )
    if path.is_dir() and not (path / "config.json").is_file():
        raise ModelLoadError(
            f"'{name}' is a directory but not a saved model (no config.json in it). Fix: pass "
            "MODEL=/path/to/local/dir of a model saved with save_pretrained, or a hub name such as gpt2."
        )


@contextmanager
def explain_load_failure(name: str, source: str, *, what: str | None = None) -> Iterator[None]:
    """Turn the loaders' deep tracebacks into one message that says what to do."""
    try:
        yield
    except (OSError, ValueError, KeyError, EnvironmentError) as err:
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        thing = what or f"model '{name}'"
        if Path(source).expanduser().is_dir():
            message = (
                f"Could not load {thing} from the directory '{source}': {detail}\n"
                "  Fix: check that the directory was written by save_pretrained (config.json, weights "
                "and tokenizer files), or pass another MODEL=/path/to/local/dir."
            )
        else:
            offline = hub_offline()
            where = "the local Hugging Face cache (offline: HF_HUB_OFFLINE is set, or the hub could not be reached)" if offline else "the Hugging Face hub"
            message = (
                f"Could not load {thing} from {where}: {detail}\n"
                "  Fix: check the name (e.g. gpt2, gpt2-medium), connect to the network so it can be "
                "downloaded once, or pass MODEL=/path/to/local/dir with a model saved by save_pretrained; "
                "MODEL=demo runs the suite on its small local model, with no network."
            )
        raise ModelLoadError(message) from None
