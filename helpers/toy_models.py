"""Small GPT-2-architecture models, built and saved locally with no network.

The tests load them through :func:`helpers.model.load_model`, the same path a researcher's ``gpt2``
takes, and ``make run MODEL=demo`` uses one so the whole pipeline can be seen without the hub. Each
saved config carries a marker (:data:`helpers.model.TOY_MODEL_KEY`) so every notebook run on a toy
model says so plainly.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from helpers.model import TOY_MODEL_KEY, load_gpt2_tokenizer


def build_toy_model(
    directory: str | Path,
    *,
    n_layers: int = 2,
    n_heads: int = 4,
    d_model: int = 64,
    n_ctx: int = 128,
    seed: int = 0,
    tokenizer: Any = None,
    description: str = "random weights",
) -> Path:
    """Save a GPT-2-architecture model with random weights (and GPT-2's tokenizer) to ``directory``.

    LayerNorm weights and biases are random too, not the usual ones and zeros, so that folding them
    (compatibility mode) leaves a non-zero unembedding bias, as in real GPT-2: an attribution that
    forgets that bias fails the tests.
    """
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    tokenizer = tokenizer if tokenizer is not None else load_gpt2_tokenizer()
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=n_ctx,
        n_embd=d_model,
        n_layer=n_layers,
        n_head=n_heads,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **{TOY_MODEL_KEY: f"{n_layers} layers, {n_heads} heads, d_model {d_model}, {description}"},
    )
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".ln_" in name or name.startswith("transformer.ln_f"):
                if name.endswith("weight"):
                    param.copy_(1.0 + 0.3 * torch.randn(param.shape, generator=generator))
                else:
                    param.copy_(0.2 * torch.randn(param.shape, generator=generator))
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def ensure_demo_model(directory: Path) -> Path:
    """Build the demo model into ``directory`` once; later calls reuse it."""
    if (directory / "config.json").is_file():
        return directory
    directory.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename, so an interrupted build never leaves a half-written model.
    staging = Path(tempfile.mkdtemp(prefix=".demo-model-", dir=directory.parent))
    try:
        build_toy_model(staging, description="random weights, the suite's demo model")
        staging.rename(directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory
