"""Loading a model (by hub name or local directory) the one way every template and test does.

Models are loaded with TransformerLens 4.x's ``TransformerBridge.boot_transformers`` and then put in
compatibility mode: LayerNorm weights folded into the next linear layer, writing weights centred, the
unembedding centred. That gives the numerics of the old ``HookedTransformer`` (what the IOI literature
reports) and makes the residual stream an exact sum of per-component outputs, which the attribution
analyses rely on. Folding LayerNorm's bias into the unembedding leaves a bias ``b_U``: attributions
that should add up to a logit difference must count it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from helpers.errors import ModelLoadError
from helpers.paths import CACHE_DIR, SHARED_GPT2_TOKENIZER

DEMO_MODEL = "demo"
DEMO_MODEL_DIR = CACHE_DIR / "demo-model"
TOY_MODEL_KEY = "circuit_suite_toy_model"
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def pick_device(device: str = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; anything else must be available on this machine."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        chosen = torch.device(device)
    except RuntimeError:
        raise ValueError(f"DEVICE={device!r} is not a device name. Fix: use auto, cpu, cuda, cuda:N or mps.") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"DEVICE={device!r} but this machine has no CUDA GPU. Fix: use DEVICE=auto or DEVICE=cpu.")
    if chosen.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"DEVICE={device!r} but MPS is not available here. Fix: use DEVICE=auto or DEVICE=cpu.")
    return chosen


def resolve_model_source(name_or_dir: str) -> str:
    """What to hand to the loader: ``demo`` becomes the locally built toy model's directory."""
    if name_or_dir == DEMO_MODEL:
        from helpers.toy_models import ensure_demo_model

        return str(ensure_demo_model(DEMO_MODEL_DIR))
    return name_or_dir


# Models kept by load_model(reuse=True), by (source, device, dtype): the templates of one run share a kernel.
_KEPT: dict[tuple[str, str, str], Any] = {}


def load_model(name_or_dir: str, *, device: str = "auto", dtype: str = "float32", reuse: bool = False) -> Any:
    """Load a model for analysis, by hub name (``gpt2``), local directory, or ``demo``.

    Args:
        name_or_dir: a Hugging Face hub name, a directory saved with ``save_pretrained`` (config,
            weights and tokenizer), or ``demo`` for the small local model (built on first use).
        device: ``auto`` (cuda, then mps, then cpu), or an explicit device.
        dtype: parameter dtype, one of :data:`DTYPES` (float32 unless memory forces otherwise).
        reuse: keep the converted model in this process and return the same one to the next call with the
            same model, device and dtype (the templates of a run share one kernel, :mod:`helpers.kernel`).
            The analyses never change a model's weights or state.

    Returns:
        A ``TransformerBridge`` in compatibility mode and eval mode, with gradients off on its
        parameters (hooks can still take gradients with respect to activations).

    Raises:
        ModelLoadError: the model cannot be found or loaded; the message says how to proceed.
    """
    from transformer_lens.model_bridge import TransformerBridge
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-shard loading bars would fill the notebook's output
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not supported. Fix: use one of {', '.join(DTYPES)}.")
    target = pick_device(device)
    source = resolve_model_source(name_or_dir)
    _check_local_dir(name_or_dir, source)
    key = (str(Path(source).expanduser().resolve()) if Path(source).expanduser().is_dir() else source, str(target), dtype)
    if reuse and key in _KEPT:
        return _KEPT[key]
    with _explain_load_failure(name_or_dir, source):
        try:
            bridge = TransformerBridge.boot_transformers(source, device=target, dtype=DTYPES[dtype])
        except ValueError as err:
            if "Could not determine supported architecture" not in str(err):
                raise
            raise ModelLoadError(_unsupported_message(name_or_dir, source)) from None
    bridge.enable_compatibility_mode()
    bridge.eval()
    for param in bridge.parameters():
        param.requires_grad_(False)
    copy_out_of_checkpoint_files(bridge)
    if reuse:
        _KEPT.clear()  # one model at a time: a kernel never holds two
        _KEPT[key] = bridge
    return bridge


def file_mapped_ranges() -> list[tuple[int, int, str]]:
    """This process's memory mappings of files, as ``(start, end, path)`` (Linux; empty elsewhere)."""
    try:
        lines = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return []
    ranges = []
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[4] != "0" and fields[5].startswith("/"):  # an inode: a file, not the heap
            start, end = (int(address, 16) for address in fields[0].split("-"))
            ranges.append((start, end, fields[5]))
    return ranges


def copy_out_of_checkpoint_files(model: Any) -> int:
    """Give each parameter and buffer still read from the checkpoint file its own memory; returns how many.

    transformers maps safetensors checkpoints into memory and hands out tensors that read the file
    mapping. Compatibility mode replaces most of them with processed weights, but a few stay (GPT-2's
    combined ``qkv`` projection), and while one does, every page of the file it has read stays resident:
    474 MiB of GPT-2 small's 497 MB file for 81 MiB of weights, measured. Copying those few frees the
    mapping. The values are the same bits; tensors that shared storage still share it (tied weights).
    Only CPU tensors can read a file mapping: nothing moves on a GPU.
    """
    mapped = [(start, end) for start, end, _ in file_mapped_ranges()]
    if not mapped:
        return 0
    tensors = [t for t in (*model.parameters(), *model.buffers()) if t.device.type == "cpu"]
    copies: dict[int, torch.UntypedStorage] = {}
    moved = 0
    with torch.no_grad():
        for tensor in tensors:
            storage = tensor.untyped_storage()
            where = storage.data_ptr()
            if not any(start <= where < end for start, end in mapped):
                continue
            if where not in copies:
                copies[where] = storage.clone()
            tensor.set_(copies[where], tensor.storage_offset(), tensor.size(), tensor.stride())
            moved += 1
    return moved


def stacked_weight(model: Any, name: str) -> torch.Tensor:
    """A weight of the model stacked over layers (``W_Q``, ``b_O``, ...), or zeros of its shape where the
    checkpoint has none (a bias-free projection, as in Llama)."""
    try:
        value = getattr(model, name)
    except AttributeError:
        value = None
    if value is not None:
        return value.detach()
    cfg = model.cfg
    shapes = {"b_Q": (cfg.n_layers, cfg.n_heads, cfg.d_head),
              "b_K": (cfg.n_layers, getattr(cfg, "n_key_value_heads", None) or cfg.n_heads, cfg.d_head),
              "b_V": (cfg.n_layers, getattr(cfg, "n_key_value_heads", None) or cfg.n_heads, cfg.d_head),
              "b_O": (cfg.n_layers, cfg.d_model), "b_in": (cfg.n_layers, cfg.d_mlp), "b_out": (cfg.n_layers, cfg.d_model),
              "b_U": (cfg.d_vocab,)}
    if name not in shapes:
        raise AttributeError(f"the model has no weight {name!r}")
    return torch.zeros(shapes[name], dtype=model.W_U.dtype, device=model.W_U.device)


def post_norm_weights(model: Any, which: str = "ln1_post") -> torch.Tensor:
    """``[layer, d_model]``: the effective weights of Gemma 2's post-norms (``ln1_post`` after attention,
    ``ln2_post`` after the MLP), which compatibility mode cannot fold; Gemma stores them as offsets from 1."""
    weights = []
    for block in model.blocks:
        norm = getattr(block, which)
        weight = norm.original_component.weight.detach().float()
        weights.append(1.0 + weight if getattr(norm, "uses_weight_offset", False) else weight)
    return torch.stack(weights)


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
    import socket

    try:
        socket.create_connection((HUB_HOST, 443), timeout=timeout).close()
        return
    except OSError:
        pass
    log(f"The Hugging Face hub ({HUB_HOST}) cannot be reached: looking for '{name_or_dir}' in the local cache only.")
    os.environ["HF_HUB_OFFLINE"] = "1"
    import sys

    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:  # already imported: it read the variable then
        constants.HF_HUB_OFFLINE = True


def model_config(name_or_dir: str) -> Any:
    """The model's Hugging Face config, without its weights (from the directory, the hub or its cache)."""
    from transformers import AutoConfig

    source = resolve_model_source(name_or_dir)
    _check_local_dir(name_or_dir, source)
    with _explain_load_failure(name_or_dir, source):
        return AutoConfig.from_pretrained(source)


def prepends_bos(name_or_dir: str) -> bool:
    """Whether the model's prompts start with BOS, known before its weights load (as the bridge decides
    it for the model's architecture)."""
    from helpers.architectures import prepends_bos as family_prepends_bos

    return family_prepends_bos(str(getattr(model_config(name_or_dir), "model_type", "")))


def _unsupported_message(name: str, source: str) -> str:
    from helpers.architectures import supported_list

    try:
        config = model_config(source)
        what = f"architecture {', '.join(getattr(config, 'architectures', None) or ['?'])} (model_type " \
               f"'{getattr(config, 'model_type', '?')}')"
    except ModelLoadError:
        what = "an architecture its config does not name"
    return (f"Model '{name}' has {what}, which TransformerLens's TransformerBridge cannot load.\n"
            f"  The suite is tested, with its fast patching path, on: {supported_list()}; other architectures the "
            "bridge loads run on the model's hooks.\n"
            "  Fix: choose a model of one of those architectures, e.g. MODEL=EleutherAI/pythia-160m.")


def folded_norm(x: torch.Tensor, cfg: Any) -> torch.Tensor:
    """A LayerNorm (or RMSNorm) of a compatibility-mode model, whose weight and bias are folded into the
    next layer: centre (LayerNorm only), then divide by the root mean square. Over the last dimension."""
    if cfg.normalization_type in ("LN", "LNPre"):
        x = x - x.mean(dim=-1, keepdim=True)
    return x / (x.pow(2).mean(dim=-1, keepdim=True) + cfg.eps).sqrt()


def folded_unembed(x: torch.Tensor, model: Any) -> torch.Tensor:
    """Logits from residual-stream vectors: the folded final LayerNorm (on ``x`` alone), then the
    unembedding with its bias, then the final soft cap where the model has one (Gemma 2)."""
    logits = folded_norm(x, model.cfg) @ model.W_U.float() + stacked_weight(model, "b_U").float()
    cap = getattr(model.cfg, "output_logits_soft_cap", None)
    return cap * torch.tanh(logits / cap) if cap is not None and cap > 0 else logits


def load_tokenizer(name_or_dir: str) -> Any:
    """The model's own tokenizer, without loading its weights (for validating a task early)."""
    from transformers import AutoTokenizer

    source = resolve_model_source(name_or_dir)
    _check_local_dir(name_or_dir, source)
    with _explain_load_failure(name_or_dir, source):
        return AutoTokenizer.from_pretrained(source)


def load_gpt2_tokenizer(path: str | Path | None = None) -> Any:
    """GPT-2's tokenizer from, in order: ``path``; ``../shared/gpt2-tokenizer``; the hub (or its cache).

    ``path`` may be a saved Hugging Face tokenizer directory or a directory holding GPT-2's
    ``vocab.json`` and ``merges.txt``.
    """
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
    with _explain_load_failure("gpt2", "gpt2", what="GPT-2's tokenizer"):
        return AutoTokenizer.from_pretrained("gpt2")


def _gpt2_tokenizer_from_bpe_files(directory: Path) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE.from_file(str(directory / "vocab.json"), str(directory / "merges.txt")))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    end = "<|endoftext|>"
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=end, eos_token=end, unk_token=end)


def toy_model_notice(name_or_dir: str) -> str | None:
    """A plain warning when the model is one of the suite's toy models (never GPT-2), else None."""
    source = Path(resolve_model_source(name_or_dir)) if name_or_dir == DEMO_MODEL else Path(name_or_dir)
    config = source / "config.json"
    if not config.is_file():
        return None
    description = json.loads(config.read_text()).get(TOY_MODEL_KEY)
    if not description:
        return None
    return (
        f"TOY MODEL: '{name_or_dir}' is a small model built locally by this suite ({description}). "
        "It is not GPT-2 or any trained model, and its numbers say nothing about one: it exists to show and test the pipeline."
    )


def _check_local_dir(name: str, source: str) -> None:
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
def _explain_load_failure(name: str, source: str, *, what: str | None = None) -> Iterator[None]:
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
