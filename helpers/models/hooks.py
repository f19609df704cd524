"""Reading activations by hook name, loudly.

TransformerLens's ``run_with_cache(names_filter=...)`` silently returns nothing for a name that
matches no hook. A misspelled name (``hook_attn`` for ``hook_pattern``) then reads as all zeros, which
is how the research notebooks reported an induction score of exactly 0 for every head. Every analysis
here reads activations through :func:`cache_activations` (or :func:`run_with_checked_cache`, where the full
logits are needed), which refuses unknown names before running and checks afterwards that each requested
hook fired; hooks that edit a run go through :func:`checked_hooks`, with the same two checks.
"""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from helpers.errors import SuiteError
from helpers.tasks.metrics import at_final_pos


class HookNotFoundError(SuiteError, KeyError):
    """A hook name matches no hook point of the model, or a hook point never fired."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


def check_hook_names(model: Any, hook_names: Sequence[str]) -> None:
    """Raise :class:`HookNotFoundError` for any name that is not a hook point of ``model``."""
    known = model.hook_dict
    for name in hook_names:
        if name not in known:
            close = difflib.get_close_matches(name, list(known), n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise HookNotFoundError(f"'{name}' is not a hook point of this model.{hint}")


# The unembedding's input. The analyses read logits at each prompt's final position only: a hook there keeps
# those positions, so the unembedding (most of a small model's forward pass, with a 50k vocabulary) computes
# one row per prompt instead of one per position. Each row is computed as before: the logits are the same.
UNEMBED_INPUT = "unembed.hook_in"
Positions = Int[Tensor, " batch"]


def cache_activations(
    model: Any,
    tokens: Int[Tensor, "batch pos"],
    hook_names: Sequence[str],
    *,
    fwd_hooks: Sequence[tuple[str, Callable[..., Any]]] = (),
    final_pos: Positions | None = None,
) -> tuple[Tensor | None, dict[str, Tensor]]:
    """Run ``model`` on ``tokens`` once and return (logits, {hook name: activation}).

    ``fwd_hooks`` (name, function) edit activations during the run, e.g. to ablate a head; cached
    activations are read after them. With ``final_pos`` (one position per row) the logits are those
    positions' alone, ``[batch, d_vocab]``, the unembedding reading nothing else; with ``final_pos=None``
    no logits are computed beyond one position and None is returned in their place.

    Raises:
        HookNotFoundError: a name is not a hook point of ``model``, or its hook did not fire.
    """
    check_hook_names(model, [name for name, _ in fwd_hooks])
    keep = _unembed_only(model, final_pos, tokens, hook_names)
    with torch.no_grad(), model.hooks(fwd_hooks=[*fwd_hooks, *keep]):
        logits, acts = run_with_checked_cache(model, tokens, hook_names)
    return (None if final_pos is None else _at_final(logits, final_pos, kept=bool(keep))), acts


def final_logits(
    model: Any, tokens: Int[Tensor, "batch pos"], final_pos: Positions,
    fwd_hooks: Sequence[tuple[str, Callable[..., Any]]] = (),
) -> Float[Tensor, "batch d_vocab"]:
    """Run ``model`` on ``tokens`` with ``fwd_hooks`` editing activations; return the logits at each row's
    ``final_pos`` (the unembedding reads those positions alone).

    Raises:
        HookNotFoundError: a hook name is not a hook point of ``model``, or its hook did not fire.
    """
    keep = _unembed_only(model, final_pos, tokens, ())
    with torch.no_grad(), checked_hooks(model, fwd_hooks) as hooks, model.hooks(fwd_hooks=[*hooks, *keep]):
        logits = model(tokens)
    return _at_final(logits, final_pos, kept=bool(keep))


@contextlib.contextmanager
def checked_hooks(model: Any, fwd_hooks: Sequence[tuple[str, Callable[..., Any]]]
                  ) -> Iterator[list[tuple[str, Callable[..., Any]]]]:
    """``fwd_hooks`` checked: every name a hook point of ``model`` (before the run), and every hook fired
    (when the block ends). Yields the hooks to run, each recording that it fired; what they compute is
    unchanged.

    Raises:
        HookNotFoundError: a name is not a hook point of ``model``, or its hook did not fire.
    """
    check_hook_names(model, [name for name, _ in fwd_hooks])
    fired: set[str] = set()

    def recording(name: str, hook_fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(activation: Tensor, hook: Any) -> Any:
            fired.add(name)
            return hook_fn(activation, hook)
        return wrapped

    yield [(name, recording(name, fn)) for name, fn in fwd_hooks]
    missing = sorted({name for name, _ in fwd_hooks} - fired)
    if missing:
        raise HookNotFoundError(f"hooks {missing} exist but did not fire during the forward pass")


def run_with_checked_cache(model: Any, tokens: Int[Tensor, "batch pos"], hook_names: Sequence[str]
                           ) -> tuple[Tensor, dict[str, Tensor]]:
    """``model.run_with_cache`` on ``tokens`` keeping ``hook_names``, with every name checked and every hook
    fired: the full logits and the activations by name.

    Raises:
        HookNotFoundError: a name is not a hook point of ``model``, or its hook did not fire.
    """
    check_hook_names(model, hook_names)
    logits, cache = model.run_with_cache(tokens, names_filter=list(hook_names))
    missing = [name for name in hook_names if name not in cache]
    if missing:
        raise HookNotFoundError(f"hooks {missing} exist but did not fire during the forward pass")
    return logits, {name: cache[name] for name in hook_names}


def _unembed_only(model: Any, final_pos: Positions | None, tokens: Tensor,
                  cached: Sequence[str]) -> list[tuple[str, Callable[..., Any]]]:
    """The hook that has the unembedding read one position per row: ``final_pos``, or the first when no
    logits are wanted (None). None for a model without that hook point, or when the unembedding's own
    hooks are being cached (they then see every position, and the logits are sliced afterwards)."""
    if UNEMBED_INPUT not in model.hook_dict or any(n.startswith("unembed.") or n == "hook_unembed" for n in cached):
        return []
    positions = (final_pos if final_pos is not None else tokens.new_zeros(tokens.shape[0])).to(tokens.device)
    rows = torch.arange(tokens.shape[0], device=tokens.device)

    def keep(stream: Tensor, hook: Any) -> Tensor:
        return stream[rows, positions][:, None]

    return [(UNEMBED_INPUT, keep)]


def _at_final(logits: Tensor, final_pos: Positions, *, kept: bool) -> Tensor:
    """``[batch, d_vocab]``: the one position the unembedding read (``kept``), or the final positions."""
    if not kept:
        return at_final_pos(logits, final_pos)
    if logits.shape[1] != 1:
        raise HookNotFoundError(f"'{UNEMBED_INPUT}' exists but did not fire: the logits cover {logits.shape[1]} positions")
    return logits[:, 0]
