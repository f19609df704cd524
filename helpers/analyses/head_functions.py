"""What does each head do? Previous-token, duplicate-token and induction scores.

Context. On a sequence of random tokens repeated twice (``BOS A B C ... A B C ...``) three kinds of
head show themselves by where they attend:

- a *previous-token* head attends from each token to the one just before it;
- a *duplicate-token* head attends from a token in the second half to the same token in the first half;
- an *induction* head attends from a token in the second half to the token *after* its first
  occurrence (it has learnt "after A came B before, so B may come again"); it needs a previous-token
  head earlier in the model to know what came before each token.

Each score is the mean attention a head puts on the position its role predicts, over the queries where
that role is defined, never counting the BOS token. Random tokens remove any meaning the head could use,
so a high score is about the mechanism alone. Attention is read from ``hook_pattern`` through
:func:`helpers.models.hooks.cache_activations`, which fails loudly on a hook that does not fire (a misspelt
hook once made every induction score of the research notebooks exactly 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from helpers.analyses.heads import HeadScore, top_of_sign
from helpers.models.devices import to_host
from helpers.models.hooks import cache_activations

Role = Literal["previous_token", "duplicate_token", "induction"]
ROLES: tuple[Role, ...] = ("previous_token", "duplicate_token", "induction")
DEFAULT_SEQ_LEN = 20
ROLE_NAMES = {"previous_token": "previous-token", "duplicate_token": "duplicate-token", "induction": "induction"}


def repeated_random_tokens(
    model: Any, *, seq_len: int, batch: int, seed: int = 0
) -> Int[Tensor, "batch pos"]:
    """``BOS`` then ``seq_len`` random tokens, then the same tokens again: ``[batch, 1 + 2 * seq_len]``.

    Tokens are drawn without repetition within a sequence (a repeat would create a second, unintended
    duplicate), from the middle of the vocabulary, with a seeded generator.
    """
    n_ctx, d_vocab = model.cfg.n_ctx, model.cfg.d_vocab
    if 1 + 2 * seq_len > n_ctx:
        raise ValueError(f"seq_len={seq_len} needs {1 + 2 * seq_len} positions but the model has n_ctx={n_ctx}. "
                         f"Fix: use seq_len <= {(n_ctx - 1) // 2}.")
    low, high = d_vocab // 50, d_vocab - d_vocab // 50
    generator = torch.Generator().manual_seed(seed)
    rows = [low + torch.randperm(high - low, generator=generator)[:seq_len] for _ in range(batch)]
    first = torch.stack(rows)
    bos = model.tokenizer.bos_token_id
    start = torch.full((batch, 1), bos if bos is not None else 0, dtype=torch.long)
    return torch.cat([start, first, first], dim=1)


@dataclass(frozen=True)
class HeadRoleScores:
    """Each head's score for each role: ``scores[role]`` is ``[layer, head]``."""

    scores: dict[str, Float[Tensor, "layer head_index"]]
    seq_len: int
    batch: int
    seed: int

    def top(self, role: Role, k: int) -> list[HeadScore]:
        """Up to ``k`` heads with a score above 0 for ``role``, highest first."""
        return top_of_sign(self.scores[role], k, "positive")

    def summary(self) -> str:
        """The top head of each role, for the run's summary; a role with no head above 0 says so."""
        parts = []
        for role in ROLES:
            top = self.top(role, 1)
            parts.append(f"{ROLE_NAMES[role]} {top[0].name} {top[0].value:.2f}" if top
                         else f"{ROLE_NAMES[role]}: no head above 0")
        return "top heads by role: " + "; ".join(parts)

    def of(self, layer: int, head: int) -> dict[str, float]:
        return {role: float(self.scores[role][layer, head]) for role in ROLES}

    def to_dict(self, k: int = 10) -> dict[str, Any]:
        return {
            "seq_len": self.seq_len, "batch": self.batch, "seed": self.seed,
            **{role: {"values": self.scores[role].tolist(), "top": [h.to_dict() for h in self.top(role, k)]}
               for role in ROLES},
        }


def role_targets(seq_len: int) -> dict[Role, tuple[Tensor, Tensor]]:
    """For each role, the (query, key) positions whose attention the score averages."""
    first_half = torch.arange(2, 1 + seq_len)  # position 1's previous token is BOS: not counted
    second_half = torch.arange(1 + seq_len, 1 + 2 * seq_len)
    all_queries = torch.cat([first_half, second_half])
    return {
        "previous_token": (all_queries, all_queries - 1),
        "duplicate_token": (second_half, second_half - seq_len),
        # the first token of the second half would attend to the token after its first occurrence
        "induction": (second_half, second_half - seq_len + 1),
    }


def compute_head_role_scores(
    model: Any, *, seq_len: int | None = None, batch: int = 8, seed: int = 0,
    tokens: Int[Tensor, "batch pos"] | None = None,
) -> HeadRoleScores:
    """Previous-token, duplicate-token and induction scores of every head on repeated random tokens.

    Args:
        model: the model.
        seq_len: length of each random sequence; ``None`` for 20, or what fits twice in a shorter context.
        batch, seed: how many sequences, and their seed (see :func:`repeated_random_tokens`).
        tokens: instead, given sequences of the same form: BOS, then ``seq_len`` tokens twice.
    """
    if seq_len is None:
        seq_len = min(DEFAULT_SEQ_LEN, (model.cfg.n_ctx - 1) // 2)
    if tokens is None:
        tokens = repeated_random_tokens(model, seq_len=seq_len, batch=batch, seed=seed)
    else:
        batch, seq_len = tokens.shape[0], (tokens.shape[1] - 1) // 2
        if tokens.shape[1] != 1 + 2 * seq_len or not torch.equal(tokens[:, 1 : 1 + seq_len], tokens[:, 1 + seq_len :]):
            raise ValueError("tokens must be BOS followed by a sequence repeated twice")
    tokens = tokens.to(model.cfg.device)
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(model.cfg.n_layers)]
    _, acts = cache_activations(model, tokens, names)
    patterns = torch.stack([acts[name].float() for name in names])  # [layer, batch, head, q, k]
    scores = {}
    for role, (queries, keys) in role_targets(seq_len).items():
        scores[role] = to_host(patterns[:, :, :, queries.to(patterns.device), keys.to(patterns.device)].mean(dim=(1, 3)))
    return HeadRoleScores(scores, seq_len, batch, seed)
