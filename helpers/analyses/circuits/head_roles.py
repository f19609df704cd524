"""Automatic head roles: every head gets a role from a fixed vocabulary, decided from evidence the suite
measures, with that evidence and a confidence beside it. A head with no evidence is ``unknown``.

The vocabulary is the IOI paper's (Wang et al. 2022), for a task whose answer is a word of the prompt (a
name), with the roles of tasks whose answer is not (sequence continuation: months, days, numbers, letters):

==========================  ==================================================================================
``name_mover``              writes the answer directly (direct effect >= EFFECT) and copies what it attends to
                            (copy score >= COPY), or attends from the final position to the answer's word
                            (>= ATTENTION); on a task whose answer is a word of the prompt
``negative_name_mover``     the same with a negative direct effect (<= -EFFECT) and a negative copy score
                            >= COPY, or attention to the answer's word
``backup_name_mover``       little direct effect in the clean run, but at least EFFECT more once the name
                            movers are ablated (mean ablation), and a copy score >= COPY or attention to the
                            answer's word
``answer_writer``           writes the answer directly (direct effect >= EFFECT), on a task whose answer is not
                            a word of the prompt (a copy score it has is listed); one with a successor score
                            >= COPY is a ``successor`` head instead, the more specific role
``negative_answer_writer``  the same with a direct effect <= -EFFECT
``s_inhibition``            its path into a name mover's (or answer writer's) query carries >= EFFECT (exact
                            path patching)
``successor``               successor score >= COPY: its OV circuit maps a word of one of the task's ordered lists
                            to the next word of that list (months, days, numbers, letters), ahead of every other
                            word of the list (Gould et al. 2023); whether or not it writes the answer
``induction``               induction score >= SCORE (attends to the token after an earlier copy of the current
                            one, on repeated random tokens)
``duplicate_token``         duplicate-token score >= SCORE (attends to an earlier copy of the current token)
``previous_token``          previous-token score >= SCORE
``copy``                    copy score >= COPY, without the effects that make a name mover
``copy_suppression``        negative copy score >= COPY, at any position, without the effects that make a
                            negative name mover (McDougall et al. 2023)
``unknown``                 none of the above
==========================  ==================================================================================

Where several roles fit, the first in that order is the label; every piece of evidence found is listed.
Effects are fractions of the clean-corrupted difference of the task metric (see :mod:`helpers.analyses.circuits.graph`).
Confidence: each piece of evidence a role needs scores ``min(1, value / (2 * threshold))`` (0.5 at the
threshold, 1 at twice it); the role's confidence is its weakest piece's. An unknown head's confidence is
1 minus the strongest score of the evidence that fell short (0.5 when something just missed).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from helpers.analyses.circuits.graph import EdgeCircuit
from helpers.analyses.copy_scores import compute_copy_scores, compute_successor_scores
from helpers.analyses.head_functions import ROLE_NAMES, compute_head_role_scores
from helpers.analyses.heads import head_name
from helpers.models.hooks import cache_activations
from helpers.results import read_section

ROLE_VOCABULARY = ("name_mover", "negative_name_mover", "backup_name_mover", "answer_writer", "negative_answer_writer",
                   "s_inhibition", "successor", "induction", "duplicate_token", "previous_token", "copy",
                   "copy_suppression", "unknown")
ROLE_LABELS = {"name_mover": "name mover", "negative_name_mover": "negative name mover",
               "backup_name_mover": "backup name mover", "answer_writer": "answer writer",
               "negative_answer_writer": "negative answer writer", "s_inhibition": "S-inhibition",
               "successor": "successor", "induction": "induction", "copy_suppression": "copy suppression",
               "copy": "copy", "unknown": "unknown",
               **ROLE_NAMES}  # the attention scores' roles as head_functions names them: "previous-token"
EFFECT = 0.1  # a tenth of the clean-corrupted difference
COPY = 0.5  # half of the words copied into the top k
SCORE = 0.4  # mean attention on the target token
ATTENTION = 0.3  # mean attention from the final position to a word


@dataclass(frozen=True)
class HeadEvidence:
    """What the suite measured about one head (None: not measured)."""

    direct_effect: float  # exact path patching of the head's edge to the logits
    direct_effect_without_movers: float | None = None  # the same once the name movers are mean-ablated
    copy: float | None = None
    negative_copy: float | None = None
    previous_token: float | None = None
    duplicate_token: float | None = None
    induction: float | None = None
    attention_to_answer: float | None = None  # mean attention from the final position to the answer's word
    successor: float | None = None  # successor score on the task's word lists (None: the task has none)
    query_paths: Mapping[str, float] = field(default_factory=dict)  # name mover -> path effect into its query


@dataclass(frozen=True)
class HeadRole:
    role: str
    confidence: float
    evidence: tuple[str, ...]

    @property
    def label(self) -> str:
        return ROLE_LABELS[self.role]

    def to_dict(self) -> dict[str, Any]:
        return {"role": self.role, "confidence": self.confidence, "evidence": list(self.evidence)}


def _strength(value: float, threshold: float) -> float:
    return max(0.0, min(1.0, value / (2 * threshold)))


def _candidates(e: HeadEvidence, name_movers: Sequence[str], *, names: bool = True) -> list[tuple[str, float, list[str]]]:
    """Every role the evidence supports, in vocabulary order, each with its confidence and evidence
    (``names``: the task's answer is a word of its prompt, so writers of it are name movers)."""
    found: list[tuple[str, float, list[str]]] = []
    if not names:
        return _answer_writer_candidates(e, name_movers)
    copies = e.copy is not None and e.copy >= COPY
    attends = e.attention_to_answer is not None and e.attention_to_answer >= ATTENTION
    copy_text = f"copy score {e.copy:.2f} (>= {COPY})" if copies and e.copy is not None else None
    attention_text = (f"attends from the end to the answer's word {e.attention_to_answer:.2f} (>= {ATTENTION})"
                      if attends and e.attention_to_answer is not None else None)
    copy_strength = max(_strength(e.copy, COPY) if copies and e.copy is not None else 0.0,
                        _strength(e.attention_to_answer, ATTENTION) if attends and e.attention_to_answer is not None
                        else 0.0)
    reads_answer = [t for t in (copy_text, attention_text) if t]
    if e.direct_effect >= EFFECT and reads_answer:
        found.append(("name_mover", min(_strength(e.direct_effect, EFFECT), copy_strength),
                      [f"direct effect {e.direct_effect:+.2f} (>= {EFFECT})", *reads_answer]))
    negative = e.negative_copy is not None and e.negative_copy >= COPY
    if e.direct_effect <= -EFFECT and (negative or attends):
        strength = max(_strength(e.negative_copy, COPY) if negative and e.negative_copy is not None else 0.0,
                       _strength(e.attention_to_answer, ATTENTION) if attends and e.attention_to_answer is not None
                       else 0.0)
        found.append(("negative_name_mover", min(_strength(-e.direct_effect, EFFECT), strength),
                      [f"direct effect {e.direct_effect:+.2f} (<= -{EFFECT})",
                       *([f"negative copy score {e.negative_copy:.2f} (>= {COPY})"] if negative else []),
                       *([attention_text] if attention_text else [])]))
    if e.direct_effect_without_movers is not None and reads_answer:
        rise = e.direct_effect_without_movers - e.direct_effect
        if rise >= EFFECT and e.direct_effect < EFFECT:
            found.append(("backup_name_mover", min(_strength(rise, EFFECT), copy_strength),
                          [f"direct effect {e.direct_effect:+.2f}, {e.direct_effect_without_movers:+.2f} with the "
                           f"name movers ablated (+{rise:.2f} >= {EFFECT})", *reads_answer]))
    return found + _reader_candidates(e, name_movers)


def _reader_candidates(e: HeadEvidence, movers: Sequence[str]) -> list[tuple[str, float, list[str]]]:
    """The roles after the writers', in vocabulary order: S-inhibition (into a mover's query), successor,
    the attention scores', copy and copy suppression."""
    found: list[tuple[str, float, list[str]]] = []
    paths = {m: v for m, v in e.query_paths.items() if m in movers and v >= EFFECT}
    if paths:
        best = max(paths, key=paths.get)  # type: ignore[arg-type]
        found.append(("s_inhibition", _strength(paths[best], EFFECT),
                      [f"path into {m}'s query {v:+.2f} (>= {EFFECT})" for m, v in sorted(paths.items())]))
    if e.successor is not None and e.successor >= COPY:
        found.append(("successor", _strength(e.successor, COPY), [f"successor score {e.successor:.2f} (>= {COPY})"]))
    for role, value, what in (("induction", e.induction, "induction score"),
                              ("duplicate_token", e.duplicate_token, "duplicate-token score"),
                              ("previous_token", e.previous_token, "previous-token score")):
        if value is not None and value >= SCORE:
            found.append((role, _strength(value, SCORE), [f"{what} {value:.2f} (>= {SCORE})"]))
    if e.copy is not None and e.copy >= COPY:
        found.append(("copy", _strength(e.copy, COPY), [f"copy score {e.copy:.2f} (>= {COPY})"]))
    if e.negative_copy is not None and e.negative_copy >= COPY:
        found.append(("copy_suppression", _strength(e.negative_copy, COPY),
                      [f"negative copy score {e.negative_copy:.2f} (>= {COPY})"]))
    return found


def _answer_writer_candidates(e: HeadEvidence, writers: Sequence[str]) -> list[tuple[str, float, list[str]]]:
    """:func:`_candidates` on a task whose answer is not a word of its prompt: answer writers instead of name
    movers (no backup: the name movers' ablation is not measured there)."""
    found: list[tuple[str, float, list[str]]] = []
    reads = [f"{what} {value:.2f} (>= {COPY})" for what, value in (("successor score", e.successor), ("copy score", e.copy))
             if value is not None and value >= COPY]
    if e.direct_effect >= EFFECT:
        effect = [f"direct effect {e.direct_effect:+.2f} (>= {EFFECT})", *reads]
        if e.successor is not None and e.successor >= COPY:  # it maps each word to the next: the more specific role
            found.append(("successor", min(_strength(e.direct_effect, EFFECT), _strength(e.successor, COPY)), effect))
        else:
            found.append(("answer_writer", _strength(e.direct_effect, EFFECT), effect))
    if e.direct_effect <= -EFFECT:
        found.append(("negative_answer_writer", _strength(-e.direct_effect, EFFECT),
                      [f"direct effect {e.direct_effect:+.2f} (<= -{EFFECT})"]))
    found += _reader_candidates(e, writers)
    return found


def _nearest(e: HeadEvidence) -> tuple[str | None, float]:
    """The measured quantity closest to its threshold (as a strength below 0.5), for an unknown head."""
    measured = [("direct effect", abs(e.direct_effect), EFFECT), ("copy score", e.copy, COPY),
                ("negative copy score", e.negative_copy, COPY), ("successor score", e.successor, COPY),
                ("induction score", e.induction, SCORE),
                ("duplicate-token score", e.duplicate_token, SCORE), ("previous-token score", e.previous_token, SCORE),
                *[(f"path into {m}'s query", v, EFFECT) for m, v in e.query_paths.items()]]
    scored = [(f"{what} {value:.2f} (threshold {threshold})", _strength(value, threshold))
              for what, value, threshold in measured if value is not None]
    return max(scored, key=lambda pair: pair[1]) if scored else (None, 0.0)


def _writes_answer(e: HeadEvidence, names: bool) -> bool:
    """Is the head a name mover (``names``), else an answer writer or a successor head that writes the answer?
    The heads whose queries S-inhibition heads feed."""
    if names:
        return any(r == "name_mover" for r, _, _ in _candidates(e, [], names=True))
    return e.direct_effect >= EFFECT


def assign_roles(evidence: Mapping[str, HeadEvidence], *, names: bool = True) -> dict[str, HeadRole]:
    """A role for every head (by name), in the order of ``evidence``; ``names``: the task's answer is a word
    of its prompt (IOI's names), so heads that write it are name movers, else answer writers.

    Movers are decided first (their evidence is their own); S-inhibition heads are then those whose path
    into a mover's query carries the effect.
    """
    movers = [h for h, e in evidence.items() if _writes_answer(e, names)]
    roles = {}
    for head, e in evidence.items():
        found = _candidates(e, movers, names=names)
        if not found:
            nearest, strength = _nearest(e)
            roles[head] = HeadRole("unknown", round(1.0 - strength, 3), (
                "no measured effect or score passes its threshold" + (f"; the nearest: {nearest}" if nearest else ""),))
            continue
        role, confidence, first = found[0]
        others = [text for _, _, texts in found[1:] for text in texts if text not in first]
        roles[head] = HeadRole(role, round(confidence, 3), tuple(first + others))
    return roles


def answer_roles(spec: Any) -> set[str]:
    """The word roles whose word is the correct answer: the placeholders in the task's ``correct``
    answer with their offsets ("[IO]" -> IO; months' "[M+4]" -> M+4, a word no prompt holds), and
    ``correct`` (an answer token found in an explicit prompt)."""

    return {"correct", *re.findall(r"\[([A-Za-z_][A-Za-z0-9_]*(?:[+-]\d+)?)\]", str(getattr(spec, "correct", "") or ""))}


def attention_to_roles(model: Any, prompts: Any, roles: set[str]) -> Any:
    """``[layer, head]``: each head's attention from each prompt's final position to the positions of
    words in ``roles``, summed over those positions and averaged over the prompts that have one (NaN
    where no prompt has such a word)."""


    n_layers = model.cfg.n_layers
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(n_layers)]
    _, acts = cache_activations(model, prompts.clean_tokens.to(model.cfg.device), names)
    total = torch.zeros(n_layers, model.cfg.n_heads, device=model.cfg.device)
    counted = 0
    for index, words in enumerate(prompts.word_positions):
        positions = sorted({w.position for w in words if w.role in roles})
        if not positions:
            continue
        final = int(prompts.final_pos[index])
        for layer, name in enumerate(names):
            total[layer] += acts[name][index, :, final, positions].float().sum(dim=-1)
        counted += 1
    return total / counted if counted else torch.full_like(total, float("nan"))


def measure_evidence(model: Any, prompts: Any, runner: Any, *, spec: Any = None,
                     copy_scores: Any = None, role_scores: Any = None, successor_scores: Any = None,
                     ) -> dict[str, HeadEvidence]:
    """Everything :func:`assign_roles` reads, for every head: direct effects by exact path patching (and
    again with the name movers mean-ablated, on a task of names), the paths into each name mover's (or
    answer writer's) query, copy, role and successor scores (given, e.g. from earlier notebooks' results as
    ``[layer, head]`` tensors, or computed), and attention from the end to the answer's word.

    Args:
        runner: a :class:`helpers.analyses.circuits.graph_runner.GraphRunner` on ``prompts``.
        spec: the task: whether its answer is a word of the prompt (:attr:`~helpers.tasks.spec.TaskSpec.answer_in_prompt`,
            else writers are answer writers), its ordered lists (successor scores) and its answer's word.
            None: a task of names, without successor scores or attention to the answer.
        copy_scores: ``(copy, negative)`` tensors ``[layer, head]``, or None to compute them.
        role_scores: ``{"previous_token": ..., "duplicate_token": ..., "induction": ...}``, or None.
        successor_scores: a ``[layer, head]`` tensor, or None to compute it where the task has ordered lists.
    """
    graph = runner.graph
    heads = [(layer, head) for layer in range(graph.n_layers) for head in range(graph.n_heads)]
    names = [head_name(layer, head) for layer, head in heads]
    task_of_names = spec is None or spec.answer_in_prompt
    if copy_scores is None:
        scores = compute_copy_scores(model, prompts)
        copy_scores = (scores.copy, scores.negative)
    if role_scores is None:
        role_scores = compute_head_role_scores(model).scores
    if successor_scores is None and spec is not None:
        successors = compute_successor_scores(model, spec)
        successor_scores = successors.values if successors is not None else None
    attention = attention_to_roles(model, prompts, answer_roles(spec)) if spec is not None else None
    direct = runner.direct_effects()
    first = {name: HeadEvidence(
        direct_effect=float(direct[graph.head_sender(layer, head)]),
        copy=float(copy_scores[0][layer, head]), negative_copy=float(copy_scores[1][layer, head]),
        previous_token=float(role_scores["previous_token"][layer, head]),
        duplicate_token=float(role_scores["duplicate_token"][layer, head]),
        induction=float(role_scores["induction"][layer, head]),
        attention_to_answer=None if attention is None or math.isnan(float(attention[layer, head]))
        else float(attention[layer, head]),
        successor=None if successor_scores is None else float(successor_scores[layer, head]),
    ) for name, (layer, head) in zip(names, heads)}
    movers = [h for h, e in first.items() if _writes_answer(e, task_of_names)]
    paths: dict[str, dict[str, float]] = {name: {} for name in names}
    for mover in movers:
        for sender, value in runner.path_patching(f"{mover}<q>", [n for n in names if n in graph.senders[
                : graph.prefix[graph.receiver_index(f"{mover}<q>")]]]).items():
            paths[sender][mover] = value
    without = None
    if movers and task_of_names:  # backup name movers: only a task of names has them
        keep = EdgeCircuit.from_heads(graph, [n for n in names if n not in movers], name="without movers").keep()
        without = runner.direct_effects(keep, "mean")
    return {name: HeadEvidence(**{**first[name].__dict__, "query_paths": paths[name],
                                  "direct_effect_without_movers": None if without is None
                                  else float(without[graph.head_sender(layer, head)])})
            for name, (layer, head) in zip(names, heads)}


def task_roles(model: Any, prompts: Any, runner: Any, spec: Any, earlier: Mapping[str, Any]) -> dict[str, HeadRole]:
    """Every head's role on ``spec``'s task: :func:`measure_evidence` (with the scores ``earlier`` notebooks
    stored, :func:`earlier_scores`) read by :func:`assign_roles` as the task asks (name movers where its
    answer is a word of the prompt, answer writers where it is not)."""
    evidence = measure_evidence(model, prompts, runner, spec=spec, **earlier_scores(earlier))
    return assign_roles(evidence, names=spec.answer_in_prompt)


def earlier_scores(earlier: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`measure_evidence`'s ``copy_scores`` and ``role_scores`` from the earlier notebooks' results
    (:func:`helpers.results.load_earlier_results` of ``head_functions`` and ``copy_scores``); None for
    what they lack (then it is computed)."""


    out: dict[str, Any] = {"copy_scores": None, "role_scores": None, "successor_scores": None}
    if "copy_scores" in earlier:
        section = earlier["copy_scores"]
        copy = read_section(section, "copy_scores", "copy_scores", "copy", "values")
        negative = read_section(section, "copy_scores", "copy_scores", "negative", "values")
        if copy is not None and negative is not None:
            out["copy_scores"] = (torch.tensor(copy), torch.tensor(negative))
        successor = read_section(section, "copy_scores", "successor_scores", "values")
        if successor is not None:
            out["successor_scores"] = torch.tensor(successor)
    if "head_functions" in earlier:
        section = earlier["head_functions"]
        scores = {role: read_section(section, "head_functions", "role_scores", role, "values")
                  for role in ("previous_token", "duplicate_token", "induction")}
        if all(v is not None for v in scores.values()):
            out["role_scores"] = {role: torch.tensor(v) for role, v in scores.items()}
    return out
