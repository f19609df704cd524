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
from pathlib import Path
from typing import Any

import torch

from helpers.errors import ModelLoadError
from helpers.models.architectures import prepends_bos as family_prepends_bos
from helpers.models.architectures import supported_list
from helpers.models.sources import (
    DEMO_MODEL,
    DEMO_MODEL_DIR,
    check_local_dir,
    explain_load_failure,
)
from helpers.models.toys import TOY_MODEL_KEY, ensure_demo_model

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
            same model, device and dtype (the templates of a run share one kernel, :mod:`helpers.run.kernel`).
            The analyses never change a model's weights or state.

    Returns:
        A ``TransformerBridge`` in compatibility mode and eval mode, with gradients off on its
        parameters (hooks can still take gradients with respect to activations).

    Raises:
        ModelLoadError: the model cannot be found or loaded; the message says how to proceed.
    """
    # deferred: TransformerLens and transformers take seconds to import; only loading needs them
    from transformer_lens.model_bridge import TransformerBridge
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-shard loading bars would fill the notebook's output
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not supported. Fix: use one of {', '.join(DTYPES)}.")
    target = pick_device(device)
    source = resolve_model_source(name_or_dir)
    check_local_dir(name_or_dir, source)
    key = (str(Path(source).expanduser().resolve()) if Path(source).expanduser().is_dir() else source, str(target), dtype)
    if reuse and key in _KEPT:
        return _KEPT[key]
    with explain_load_failure(name_or_dir, source):
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


def model_config(name_or_dir: str) -> Any:
    """The model's Hugging Face config, without its weights (from the directory, the hub or its cache)."""
    # deferred: TransformerLens and transformers take seconds to import; only loading needs them
    from transformers import AutoConfig

    source = resolve_model_source(name_or_dir)
    check_local_dir(name_or_dir, source)
    with explain_load_failure(name_or_dir, source):
        return AutoConfig.from_pretrained(source)


def prepends_bos(name_or_dir: str) -> bool:
    """Whether the model's prompts start with BOS, known before its weights load (as the bridge decides
    it for the model's architecture)."""
    return family_prepends_bos(str(getattr(model_config(name_or_dir), "model_type", "")))


def _unsupported_message(name: str, source: str) -> str:
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
    # deferred: TransformerLens and transformers take seconds to import; only loading needs them
    from transformers import AutoTokenizer

    source = resolve_model_source(name_or_dir)
    check_local_dir(name_or_dir, source)
    with explain_load_failure(name_or_dir, source):
        return AutoTokenizer.from_pretrained(source)


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


