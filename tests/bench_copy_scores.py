"""Benchmark: copy scores for every head at once against a loop over heads and prompts (``make bench``).

On a model of GPT-2 small's shape (random weights) and the IOI task's 64 prompts (320 words of
interest), times :func:`helpers.analyses.copy_scores.compute_copy_scores` for all 144 heads, then the
straightforward computation (for each head, for each prompt: LayerNorm, OV circuit, final LayerNorm,
unembedding, top-k) for the heads of the first ``--loop-layers`` layers. Prints the time per head of
each, their ratio, whether the two agree on every input, and the peak memory.
"""

from __future__ import annotations

import argparse
import os
import time

# Before torch, which imports tqdm: transformer_lens.patching's per-sweep progress bars stay quiet.
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from bench_common import gpt2_small_shaped_model, peak_memory_mib  # noqa: E402

from helpers.analyses.copy_scores import CopyInputs, compute_copy_scores, copy_inputs, resid_after_first_layer  # noqa: E402
from helpers.models.load import folded_norm  # noqa: E402
from helpers.tasks.prompts import PromptSet, build_prompts, load_task  # noqa: E402


def loop_copy_scores(model: object, prompts: PromptSet, inputs: CopyInputs, layers: int, k: int) -> torch.Tensor:
    """``[layer, head, case]`` top-k membership, one head and one prompt at a time."""
    resid = folded_norm(resid_after_first_layer(model, prompts, inputs), model.cfg)
    w_v, w_o, w_u, b_u = model.W_V.float(), model.W_O.float(), model.W_U.float(), model.b_U.float()
    result = torch.zeros(layers, model.cfg.n_heads, len(inputs), dtype=torch.bool)
    for layer in range(layers):
        for head in range(model.cfg.n_heads):
            for prompt in range(len(prompts)):
                cases = (inputs.prompt_index == prompt).nonzero()[:, 0]
                out = resid[cases] @ w_v[layer, head] @ w_o[layer, head]
                logits = folded_norm(out, model.cfg) @ w_u + b_u
                top = logits.topk(k, dim=-1).indices
                result[layer, head, cases] = (top == inputs.token[cases, None]).any(dim=-1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loop-layers", type=int, default=1, help="layers whose heads the loop computes")
    args = parser.parse_args()
    model, tokenizer = gpt2_small_shaped_model()
    prompts = build_prompts(load_task("ioi"), tokenizer)
    inputs = copy_inputs(prompts)
    n_heads = model.cfg.n_heads
    print(f"model: {model.cfg.n_layers} layers x {n_heads} heads, d_model {model.cfg.d_model}, "
          f"d_vocab {model.cfg.d_vocab}; {len(prompts)} IOI prompts, {len(inputs)} words of interest; "
          f"torch threads: {torch.get_num_threads()}")

    started = time.perf_counter()
    scores = compute_copy_scores(model, prompts, k=5)
    batched = time.perf_counter() - started
    all_heads = model.cfg.n_layers * n_heads
    started = time.perf_counter()
    reference = loop_copy_scores(model, prompts, inputs, args.loop_layers, k=5)
    looped = time.perf_counter() - started
    loop_heads = args.loop_layers * n_heads
    disagree = int((reference != scores.in_top[: args.loop_layers]).sum())

    print(f"\n{'':<34}{'heads':>7}{'seconds':>10}{'ms per head':>13}")
    print(f"{'batched, every head at once':<34}{all_heads:>7}{batched:>10.2f}{1000 * batched / all_heads:>13.1f}")
    print(f"{'loop over heads and prompts':<34}{loop_heads:>7}{looped:>10.2f}{1000 * looped / loop_heads:>13.1f}")
    print(f"\nper head, the loop takes {(looped / loop_heads) / (batched / all_heads):.1f}x as long as the batched "
          f"computation; they disagree on {disagree} of {loop_heads * len(inputs)} (head, input) pairs")
    print(f"peak resident memory of this process: {peak_memory_mib():.0f} MiB")


if __name__ == "__main__":
    main()
