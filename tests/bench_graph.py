"""Benchmark of circuit discovery on a GPT-2-small-shaped model (random weights), 64 IOI prompts: EAP and
EAP-IG over the whole graph (32491 edges), and exact path patching of every sender into each of the top
5 receivers' query, key and value inputs. Prints each time against its budget (issue: EAP-IG with 5
steps <= 90 s, the path-patching maps <= 120 s on 2 CPU cores) and the peak memory."""

from __future__ import annotations

import argparse
import time

import torch
from bench_common import matmul_flops_per_second, peak_memory_mib, shaped_model

from helpers.analyses.circuits.graph_runner import GraphRunner
from helpers.tasks.prompts import build_prompts, load_task

BUDGETS = {"EAP-IG (5 steps)": 90.0, "path patching, top 5 receivers x q/k/v": 120.0}


def path_patching_flops(runner: GraphRunner, heads: list[str]) -> float:
    """The multiply-adds the exact maps cannot avoid: per sender, prompt and changed position, the layers
    from the receiver's on (its MLP, then whole layers; the last layer at the final position only)."""
    cfg = runner.model.cfg
    per_token_layer = 2 * (4 * cfg.d_model * cfg.d_model + 2 * cfg.d_model * cfg.d_mlp)
    start = min(runner.first_difference, int(runner.final_pos.min()))
    positions = runner.clean_tokens.shape[1] - start
    total = 0.0
    for head in heads:
        layer = int(head[1:].split("H")[0])
        senders = runner.graph.prefix[runner.graph.head_receiver(layer, 0, "q")]
        downstream = max(cfg.n_layers - 1 - layer, 0) + 2 / 3  # whole later layers (the last one: its keys, values)
        total += 3 * senders * runner.final_pos.shape[0] * positions * downstream * per_token_layer
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="gpt2-small")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--receivers", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    model, tokenizer = shaped_model(args.shape)
    prompts = build_prompts(load_task("ioi").with_overrides(n_prompts=args.prompts), tokenizer,
                            prepend_bos=bool(model.cfg.default_prepend_bos))
    print(f"{args.shape}-shaped model, {args.prompts} IOI prompts of {prompts.clean_tokens.shape[1]} tokens, "
          f"{torch.get_num_threads()} threads")
    times: dict[str, float] = {}
    started = time.perf_counter()
    runner = GraphRunner(model, prompts, max_rows=16)
    times["set-up (clean and corrupted runs)"] = time.perf_counter() - started
    print(f"graph: {runner.graph.n_senders} senders, {runner.graph.n_receivers} receivers, {runner.graph.n_edges} edges")
    started = time.perf_counter()
    runner.eap()
    times["EAP"] = time.perf_counter() - started
    started = time.perf_counter()
    scores = runner.eap_ig(steps=5)
    times["EAP-IG (5 steps)"] = time.perf_counter() - started
    direct = runner.path_patching("logits")
    top = sorted((n for n in direct if n.startswith("L")), key=lambda n: -abs(direct[n]))[: args.receivers]
    started = time.perf_counter()
    for head in top:
        for kind in "qkv":
            runner.path_patching(f"{head}<{kind}>")
    times[f"path patching, top {args.receivers} receivers x q/k/v"] = time.perf_counter() - started
    print(f"top receivers by direct effect: {', '.join(top)}")
    floor = path_patching_flops(runner, top)
    rate = matmul_flops_per_second()
    print(f"path patching's FLOP floor: {floor / 1e12:.1f} TFLOP (every sender's run from its receiver's layer on, "
          f"one layer's weights per token and layer); this machine's float32 matmul: {rate / 1e9:.0f} GFLOP/s, so at "
          f"least {floor / rate:.0f} s")
    started = time.perf_counter()
    runner.evaluate(scores.circuit(runner.graph.n_edges // 20), "resample")
    times["one circuit run (5% of edges)"] = time.perf_counter() - started
    for name, seconds in times.items():
        budget = BUDGETS.get(name)
        verdict = "" if budget is None else f"  (budget {budget:.0f} s: {'within' if seconds <= budget else 'OVER'})"
        print(f"  {name:45s} {seconds:7.1f} s{verdict}")
    print(f"peak memory {peak_memory_mib() / 1024:.2f} GiB")


if __name__ == "__main__":
    main()
