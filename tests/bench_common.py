"""What the benchmarks share: models of real models' shapes with random weights, built locally and cached."""

from __future__ import annotations

import resource
from pathlib import Path
from typing import Any

from helpers.models.load import load_model
from helpers.models.sources import load_gpt2_tokenizer
from helpers.models.toys import build_toy_model
from helpers.paths import CACHE_DIR

# Shapes, by name: (architecture, layers, heads, d_model, key/value heads). GPT-2 small's; Pythia-160m's
# (rotary on a quarter of each head, parallel blocks); a Llama of the same width with grouped-query
# attention (4 key/value heads for 12 query heads), RMSNorm and a gated MLP. All with GPT-2's vocabulary.
SHAPES: dict[str, tuple[str, int, int, int, int | None]] = {
    "gpt2-small": ("gpt2", 12, 12, 768, None),
    "pythia-160m": ("gpt_neox", 12, 12, 768, None),
    "llama-gqa": ("llama", 12, 12, 768, 4),
}


def shaped_model_dir(shape: str = "gpt2-small") -> Path:
    """The directory of one of :data:`SHAPES` with random weights, built into ``.cache/`` on first use
    (no download)."""
    architecture, n_layers, n_heads, d_model, n_kv_heads = SHAPES[shape]
    directory = CACHE_DIR / ("bench-gpt2-small-shape" if shape == "gpt2-small" else f"bench-{shape}-shape")
    if not (directory / "config.json").is_file():
        print(f"building a {shape}-shaped model with random weights in {directory} ...", flush=True)
        build_toy_model(directory, architecture=architecture, n_layers=n_layers, n_heads=n_heads, d_model=d_model,
                        n_ctx=1024, n_kv_heads=n_kv_heads, tokenizer=load_gpt2_tokenizer(),
                        description=f"random weights, {shape}'s shape, for benchmarks")
    return directory


def shaped_model(shape: str = "gpt2-small", device: str = "cpu") -> tuple[Any, Any]:
    """(model, tokenizer) of one of :data:`SHAPES` (:func:`shaped_model_dir`), on ``device``."""
    return load_model(str(shaped_model_dir(shape)), device=device), load_gpt2_tokenizer()


def synchronize(device: Any) -> None:
    """Wait for the device's queued work, so that a timer read after it measures the work (a GPU runs
    asynchronously; on the CPU there is nothing to wait for)."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def matmul_flops_per_second(n: int = 2048, repeats: int = 5) -> float:
    """This machine's float32 matrix-multiply throughput (FLOP/s), measured now."""
    import time

    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return repeats * 2 * n**3 / (time.perf_counter() - started)


def gpt2_small_shaped_model() -> tuple[Any, Any]:
    """(model, tokenizer): 12 layers, 12 heads, d_model 768, GPT-2's vocabulary, random weights."""
    return shaped_model("gpt2-small")


def peak_memory_mib() -> float:
    """Peak resident memory of this process so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
