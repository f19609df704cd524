"""Exact patching through the model's own hooks: the path for any architecture the engine's own forward
pass does not cover, and an independent route to check the engine against.

Each patch is made in the model's real forward pass by a hook (checked as every hook of the suite is,
:mod:`helpers.models.hooks`: a name the model lacks, or a hook that never fired, is an error); many
patches run as one batch: the corrupted prompts repeated once per patch, copy ``i`` carrying patch ``i``.
Head-level patches are made on ``hook_z``, which every architecture's attention reads live (its input to the output projection):

- a head's output: its clean ``z``;
- its values: ``z = corrupted pattern @ clean values`` (the values that query head reads);
- its pattern: ``z = clean pattern @ corrupted values``.

Patterns and values come from the clean and corrupted runs' caches: a patch at one layer cannot change
that layer's own attention pattern. This also works where the bridge delegates attention to the Hugging
Face module (GPT-Neo, GPT-J, OPT), whose ``hook_pattern`` is only a copy an edit cannot reach.

Attribution patching here takes one backward pass of the corrupted run to ``hook_z`` and ``hook_post``;
the gradients with respect to each head's values and pattern follow from ``z = pattern @ values`` by the
chain rule, so no pattern hook needs to carry gradient.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from helpers.analyses.contrast import Contrast
from helpers.analyses.patching.variants import PER_POSITION, VARIANTS, PatchKind, Run
from helpers.models.devices import to_host
from helpers.models.hooks import checked_hooks, run_with_checked_cache
from helpers.tasks.metrics import at_final_pos

FinalLogitsMetric = Callable[[Float[Tensor, "batch d_vocab"]], Tensor]
# Logits the model computes in one batch are bounded to about this many floats (1 GiB in float32).
_LOGIT_BUDGET = 2**28


class HookPatcher:
    """Patching by hooks on ``model`` of ``contrast``'s prompts (see the module docstring). ``metric`` maps final-position logits
    ``[batch, d_vocab]`` to a scalar; ``group_size`` is the number of query heads per key/value head."""

    def __init__(self, model: Any, contrast: Contrast, metric: FinalLogitsMetric, *, group_size: int = 1,
                 max_rows: int = 256):
        self.model, self.metric, self.group_size = model, metric, group_size
        clean_tokens, corrupted_tokens = contrast.clean_tokens, contrast.corrupted_tokens
        self.clean_tokens, self.corrupted_tokens, self.final_pos = clean_tokens, corrupted_tokens, contrast.final_pos
        self.n_layers, self.n_heads = model.cfg.n_layers, model.cfg.n_heads
        batch, width = corrupted_tokens.shape
        self.configs_per_run = max(1, min(max_rows, _LOGIT_BUDGET // (width * model.cfg.d_vocab)) // batch)
        streams = [VARIANTS[kind].hook for kind in PER_POSITION]
        names = [f"blocks.{layer}.{name}" for layer in range(self.n_layers) for name in (
            *streams, "attn.hook_z", "attn.hook_v", "attn.hook_pattern", "mlp.hook_post")]
        with torch.no_grad():
            _, self.clean = run_with_checked_cache(model, clean_tokens, names)
            self.corrupted_logits, self.corrupted = run_with_checked_cache(model, corrupted_tokens, names)

    def by_query_head(self, v: Tensor) -> Tensor:
        return v if self.group_size == 1 else v.repeat_interleave(self.group_size, dim=2)

    def _head_z(self, kind: PatchKind, layer: int) -> Tensor:
        """Every head's patched ``z`` ``[batch, pos, head, d_head]`` for ``kind`` (its row, :mod:`.variants`)."""
        runs = {"clean": self.clean, "corrupted": self.corrupted}

        def read(name: str) -> Callable[[Run], Tensor]:
            return lambda run: runs[run][f"blocks.{layer}.attn.{name}"]

        return VARIANTS[kind].patched_z(read("hook_z"), read("hook_pattern"),
                                        lambda run: self.by_query_head(read("hook_v")(run)))

    def patch(self, kind: PatchKind, layers: Iterator[int], first_difference: int) -> Float[Tensor, "layer column"]:
        """The metric after each patch of ``kind``: ``[layer, position]`` or ``[layer, head]``."""
        row = VARIANTS[kind]
        width = self.corrupted_tokens.shape[1]
        per_position = row.per_position
        n_columns = width if per_position else self.n_heads
        corrupted_metric = float(self.metric(at_final_pos(self.corrupted_logits, self.final_pos)))
        values = torch.full((self.n_layers, n_columns), corrupted_metric, device=self.corrupted_logits.device)
        columns = list(range(first_difference, width)) if per_position else list(range(self.n_heads))
        for layer in layers:
            name = f"blocks.{layer}.{row.hook}"
            source = self.clean[name] if per_position else self._head_z(kind, layer)
            for chunk in _chunks(columns, self.configs_per_run):
                values[layer, chunk] = self._run(len(chunk), [(name, _patch_columns(source, chunk, per_position))]).to(
                    values.device)
        return to_host(values)

    def patch_heads_final_logits(self, kind: PatchKind, layer: int, heads: list[int]) -> Float[Tensor, "head batch d_vocab"]:
        """The final-position logits of the corrupted run with each of ``heads`` of ``layer`` patched (``kind``
        a head kind), one copy of the prompts per head: what per-prompt figures of a patch are made from."""
        source = self._head_z(kind, layer)
        hook = (f"blocks.{layer}.attn.hook_z", _patch_columns(source, heads, False))
        with torch.no_grad(), checked_hooks(self.model, [hook]) as hooks:
            logits = self.model.run_with_hooks(self.corrupted_tokens.repeat(len(heads), 1), fwd_hooks=hooks)
        return at_final_pos(logits, self.final_pos.repeat(len(heads))).unflatten(0, (len(heads), -1))

    def patch_resid_positions(self, layer: int, positions: list[int]) -> float:
        name = f"blocks.{layer}.hook_resid_pre"

        def patch(act: Tensor, hook: Any) -> Tensor:
            act = act.clone()
            act[:, positions] = self.clean[name][:, positions]
            return act

        return float(self._run(1, [(name, patch)])[0])

    def patch_neurons(self, layer: int, neurons: list[int] | None = None) -> Float[Tensor, " neuron"]:
        """Each neuron of ``layer`` (``hook_post``; every one, or those listed) patched at each prompt's
        final position."""
        name = f"blocks.{layer}.mlp.hook_post"
        clean = self.clean[name]
        chosen = list(range(clean.shape[-1])) if neurons is None else list(neurons)
        batch = clean.shape[0]
        rows_of_prompt = torch.arange(batch, device=clean.device)
        final = self.final_pos.to(clean.device)
        values = torch.empty(len(chosen), device=clean.device)
        slot_of = {neuron: i for i, neuron in enumerate(chosen)}
        for chunk in _chunks(chosen, self.configs_per_run):
            def patch(act: Tensor, hook: Any, chunk: list[int] = chunk) -> Tensor:
                act = act.clone()
                for i, neuron in enumerate(chunk):
                    rows = rows_of_prompt + i * batch
                    act[rows, final, neuron] = clean[rows_of_prompt, final, neuron]
                return act

            values[[slot_of[n] for n in chunk]] = self._run(len(chunk), [(name, patch)]).to(values.device)
        return to_host(values)

    def _run(self, n_configs: int, hooks: list[tuple[str, Callable[..., Any]]]) -> Tensor:
        """The metric of each of ``n_configs`` copies of the corrupted prompts, run with ``hooks``."""
        with torch.no_grad(), checked_hooks(self.model, hooks) as checked:
            logits = self.model.run_with_hooks(self.corrupted_tokens.repeat(n_configs, 1), fwd_hooks=checked)
        final = at_final_pos(logits, self.final_pos.repeat(n_configs)).unflatten(0, (n_configs, -1))
        return torch.stack([torch.as_tensor(self.metric(final[i])) for i in range(n_configs)]).float()  # on the device

    # -- attribution patching ---------------------------------------------------------------------------

    def gradients(self) -> dict[str, list[Tensor]]:
        """d metric / d activation on the corrupted run: ``z`` and ``post`` per layer, and ``v`` (per query
        head) and ``pattern`` by the chain rule through ``z = pattern @ v``."""
        kept: dict[str, Tensor] = {}

        def start_graph(act: Tensor, hook: Any) -> Tensor:
            return act.detach().requires_grad_(True)

        def keep(act: Tensor, hook: Any) -> Tensor:
            act = act.clone()  # a fresh tensor puts the hook point on the gradient's path
            act.retain_grad()
            kept[hook.name] = act
            return act

        hooks = [("hook_embed", start_graph)] + [(f"blocks.{layer}.{name}", keep) for layer in range(self.n_layers)
                                                  for name in ("attn.hook_z", "mlp.hook_post")]
        with torch.enable_grad(), checked_hooks(self.model, hooks) as checked:
            logits = self.model.run_with_hooks(self.corrupted_tokens, fwd_hooks=checked)
            self.metric(at_final_pos(logits, self.final_pos)).backward()
        grads: dict[str, list[Tensor]] = {"z": [], "v": [], "pattern": [], "post": []}
        for layer in range(self.n_layers):
            grad_z = kept[f"blocks.{layer}.attn.hook_z"].grad
            pattern = self.corrupted[f"blocks.{layer}.attn.hook_pattern"]
            v = self.by_query_head(self.corrupted[f"blocks.{layer}.attn.hook_v"])
            grads["z"].append(grad_z)
            grads["v"].append(torch.einsum("bhqk,bqhd->bkhd", pattern, grad_z))
            grads["pattern"].append(torch.einsum("bqhd,bkhd->bhqk", grad_z, v))
            grads["post"].append(kept[f"blocks.{layer}.mlp.hook_post"].grad)
        return grads

    def activation_changes(self, layer: int) -> dict[str, Tensor]:
        """Clean minus corrupted ``z``, values (per query head), pattern and ``post`` of ``layer``."""
        def change(name: str, per_head: bool = False) -> Tensor:
            clean, corrupted = self.clean[f"blocks.{layer}.{name}"], self.corrupted[f"blocks.{layer}.{name}"]
            if per_head:
                clean, corrupted = self.by_query_head(clean), self.by_query_head(corrupted)
            return clean - corrupted

        return {"z": change("attn.hook_z"), "v": change("attn.hook_v", per_head=True),
                "pattern": change("attn.hook_pattern"), "post": change("mlp.hook_post")}


def _patch_columns(source: Tensor, columns: list[int], per_position: bool) -> Callable[..., Tensor]:
    """A hook that gives copy ``i`` of the prompts ``source``'s values at ``columns[i]`` (a position, or
    with ``per_position=False`` a head of ``hook_z``)."""
    def patch(act: Tensor, hook: Any) -> Tensor:
        act = act.clone()
        batch = source.shape[0]
        for i, column in enumerate(columns):
            rows = slice(i * batch, (i + 1) * batch)
            if per_position:
                act[rows, column] = source[:, column]
            else:
                act[rows, :, column] = source[:, :, column]
        return act

    return patch


def _chunks(items: list[int], size: int) -> Iterator[list[int]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
