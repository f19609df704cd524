"""Benchmark: our patching engine against transformer_lens.patching (``make bench``), per architecture.

Builds, locally and without downloads, models with random weights of GPT-2 small's shape, Pythia-160m's
(GPT-NeoX: rotary, parallel blocks) and a Llama of the same width with grouped-query attention (see
``bench_common.SHAPES``), and 8 IOI prompts of 15 tokens. For each architecture and each of the six
patching variants it times transformer_lens.patching and our engine in the same process, alternating,
and prints each time, the ratio and the largest absolute difference between the two results (with
grouped-query attention, transformer_lens patches each key/value head's values while the engine patches
each query head's, so that row's difference is not computed).
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

# Before torch, which imports tqdm: transformer_lens.patching's per-sweep progress bars stay quiet.
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from bench_common import SHAPES, peak_memory_mib, shaped_model, synchronize  # noqa: E402

from helpers.analyses.patching import PATCH_KINDS, VARIANTS, PatchingEngine  # noqa: E402
from helpers.models.load import pick_device  # noqa: E402
from helpers.tasks.metrics import at_final_pos  # noqa: E402
from helpers.tasks.prompts import build_prompts, load_task, parse_task  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1, help="timed runs of each side per variant")
    parser.add_argument("--shapes", default=",".join(SHAPES), help=f"comma-separated, of {', '.join(SHAPES)}")
    parser.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps: "
                                                         "both sides run there")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    device = str(pick_device(args.device))
    summary = []
    for shape in args.shapes.split(","):
        summary.append((shape, *bench_shape(shape, args.repeats, device)))
    print(f"\nper architecture, the six variants together, both on {device}:")
    for shape, tl_s, ours_s, worst in summary:
        print(f"  {shape:<14} transformer_lens {tl_s:7.1f} s, ours {ours_s:6.1f} s: {tl_s / ours_s:5.1f}x "
              f"(largest difference {worst:.1e})")
    print(f"\npeak resident memory of this process: {peak_memory_mib():.0f} MiB")


def bench_shape(shape: str, repeats: int, device: str = "cpu") -> tuple[float, float, float]:
    model, tokenizer = shaped_model(shape, device)
    ioi = load_task("ioi").to_dict()
    spec = parse_task({**ioi, "templates": ioi["templates"][:1], "n_prompts": 8}, source="benchmark")
    prompts = build_prompts(spec, tokenizer, prepend_bos=bool(model.cfg.default_prepend_bos))
    cfg = model.cfg
    print(f"\n== {shape} on {device}: {cfg.n_layers} layers x {cfg.n_heads} heads, d_model {cfg.d_model}, d_vocab "
          f"{cfg.d_vocab}; prompts: {tuple(prompts.clean_tokens.shape)}; torch threads: {torch.get_num_threads()}")

    started = time.perf_counter()
    engine = PatchingEngine(model, prompts, progress=False)
    setup = time.perf_counter() - started
    assert engine.uses_fast_path, engine.fast_path_reason
    _, clean_cache = model.run_with_cache(prompts.clean_tokens.to(device))
    corrupted = prompts.corrupted_tokens.to(device)

    def metric(logits: torch.Tensor) -> torch.Tensor:
        return engine.metric(at_final_pos(logits, prompts.final_pos))

    print(f"engine set-up (clean and corrupted runs, self-check): {setup:.2f} s\n")
    print(f"{'variant':<14}{'transformer_lens s':>20}{'ours s':>10}{'ratio':>9}{'max abs diff':>15}")
    total_tl = total_ours = 0.0
    worst = 0.0
    for kind in PATCH_KINDS:
        tl_times, our_times = [], []
        for _ in range(repeats):
            synchronize(device)
            t0 = time.perf_counter()
            reference = VARIANTS[kind].reference(model, corrupted, clean_cache, metric)
            synchronize(device)
            tl_times.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            ours = engine.patch(kind).values  # on the host: the engine's one transfer, timed with it
            our_times.append(time.perf_counter() - t0)
        comparable = ours.shape == reference.shape
        diff = float((ours - reference.cpu()).abs().max()) if comparable else float("nan")
        worst = max(worst, diff) if comparable else worst
        tl_s, our_s = min(tl_times), min(our_times)
        total_tl += tl_s
        total_ours += our_s
        shown = f"{diff:>15.2e}" if comparable else f"{'per KV head':>15}"
        print(f"{kind:<14}{tl_s:>20.2f}{our_s:>10.2f}{tl_s / our_s:>8.1f}x{shown}", flush=True)
    print(f"{'all six':<14}{total_tl:>20.2f}{total_ours:>10.2f}{total_tl / total_ours:>8.1f}x{worst:>15.2e}")
    return total_tl, total_ours, worst


if __name__ == "__main__":
    main()
