"""Prompts: a validated :class:`helpers.tasks.spec.TaskSpec` and a model's tokenizer -> a :class:`PromptSet`.

Generation draws each prompt's words with a seeded generator (the same task file and seed give the same
prompts on any machine); tokenization checks what needs the tokenizer: single-token answers where they
stand after the prompt, clean and corrupted prompts of equal token length, enough prompts, and where each
placeholder's word sits. The task file's own format and validation live in :mod:`helpers.tasks.spec`, whose
names this module also exports.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from helpers.tasks.metrics import AnswerMetric
from helpers.tasks.spec import (
    _ATTEMPTS_PER_PROMPT,
    METRIC_KINDS,
    METRIC_NAMES,
    PLACEHOLDER_RE,
    RESERVED_TASK_NAMES,
    TASK_NAME_RE,
    AnswerRule,
    AnswerSets,
    Corruption,
    ExplicitPrompt,
    MetricKind,
    TaskError,
    TaskSpec,
    _Checker,
    _offsets,
    available_tasks,
    load_task,
    parse_task,
    placeholder_names,
    resolve_task_path,
)

__all__ = [
    "METRIC_KINDS", "METRIC_NAMES", "PLACEHOLDER_RE", "RESERVED_TASK_NAMES", "TASK_NAME_RE", "AnswerRule",
    "AnswerSets", "Corruption", "ExplicitPrompt", "MetricKind", "PromptSet", "PromptText", "TaskError", "TaskSpec",
    "WordPosition", "answer_token", "available_tasks", "build_prompts", "generate_prompt_texts", "load_task",
    "multi_token_words", "parse_task", "placeholder_names", "resolve_task_path", "token_labels",
]

# ---------------------------------------------------------------------------------------------------
# Prompt generation and tokenization (needs the model's tokenizer)
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromptText:
    """One prompt as text, before tokenization."""

    clean: str
    corrupted: str
    correct: str
    incorrect: str
    template_index: int = -1
    words: tuple[tuple[str, str], ...] = ()
    spans: tuple[tuple[str, int, int], ...] = ()  # (placeholder, start, end) of each word in ``clean``
    correct_set: tuple[str, ...] = ()  # the answers' texts; (correct,) unless the metric has answer sets
    incorrect_set: tuple[str, ...] = ()

    @property
    def answers(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return self.correct_set or (self.correct,), self.incorrect_set or (self.incorrect,)


@dataclass(frozen=True)
class WordPosition:
    """A word of interest in a clean prompt: a placeholder's word, or an answer token found there."""

    role: str  # the placeholder ("IO", "S"), or "correct" / "incorrect" for an answer token in the prompt
    position: int  # token position, counting BOS
    token: int  # the token there (a word of several tokens is represented by its first)


@dataclass(frozen=True)
class PromptSet:
    """The task's prompts as token tensors, ready for the model.

    Prompts are right-padded: a causal model's activations at real positions do not depend on the
    padding after them, and ``final_pos`` says where each prompt ends (where the answer is predicted).
    Clean and corrupted versions of a prompt always have the same length, so positions line up.
    """

    clean_prompts: tuple[str, ...]
    corrupted_prompts: tuple[str, ...]
    correct_answers: tuple[str, ...]
    incorrect_answers: tuple[str, ...]
    template_index: tuple[int, ...]
    clean_tokens: Int[Tensor, "batch pos"]
    corrupted_tokens: Int[Tensor, "batch pos"]
    metric: AnswerMetric
    final_pos: Int[Tensor, " batch"]
    clean_str_tokens: tuple[tuple[str, ...], ...]
    corrupted_str_tokens: tuple[tuple[str, ...], ...]
    word_positions: tuple[tuple[WordPosition, ...], ...] = ()

    def __len__(self) -> int:
        return len(self.clean_prompts)

    @property
    def answer_tokens(self) -> Int[Tensor, "batch 2"]:
        """``[correct, incorrect]`` token per prompt; a ValueError for tasks whose answers are sets."""
        return self.metric.pairs()

    def select(self, indices: list[int]) -> PromptSet:
        """A subset of the prompts, with padding trimmed to the longest one kept."""
        if not indices:
            raise ValueError("select needs at least one prompt")
        rows = torch.tensor(indices, dtype=torch.long)
        width = int(self.final_pos[rows].max()) + 1

        def pick(values: tuple[Any, ...]) -> tuple[Any, ...]:
            return tuple(values[i] for i in indices)

        return PromptSet(
            clean_prompts=pick(self.clean_prompts),
            corrupted_prompts=pick(self.corrupted_prompts),
            correct_answers=pick(self.correct_answers),
            incorrect_answers=pick(self.incorrect_answers),
            template_index=pick(self.template_index),
            clean_tokens=self.clean_tokens[rows, :width],
            corrupted_tokens=self.corrupted_tokens[rows, :width],
            metric=self.metric.select(rows),
            final_pos=self.final_pos[rows],
            clean_str_tokens=pick(self.clean_str_tokens),
            corrupted_str_tokens=pick(self.corrupted_str_tokens),
            word_positions=pick(self.word_positions) if self.word_positions else (),
        )

    def for_template(self, template: int | None) -> PromptSet:
        """The prompts made from one template (their positions line up), or all with ``None``.
        A task of explicit prompts has no templates: all its prompts are returned."""
        if template is None or set(self.template_index) == {-1}:
            return self
        indices = [i for i, t in enumerate(self.template_index) if t == template]
        if not indices:
            raise ValueError(f"no prompt comes from template {template}; templates here: {sorted(set(self.template_index))}")
        return self.select(indices)

    def position_labels(self, index: int = 0) -> tuple[str, ...]:
        """Axis labels for the positions of one clean prompt (with its padding, if any)."""
        tokens = self.clean_str_tokens[index]
        width = self.clean_tokens.shape[1]
        return tuple(token_labels(tokens + ("<pad>",) * (width - len(tokens))))

    def to(self, device: str | torch.device) -> PromptSet:
        return replace(
            self,
            clean_tokens=self.clean_tokens.to(device),
            corrupted_tokens=self.corrupted_tokens.to(device),
            metric=self.metric.to(device),
            final_pos=self.final_pos.to(device),
        )


def token_labels(str_tokens: tuple[str, ...] | list[str]) -> list[str]:
    """Unique, readable axis labels for a prompt's tokens: ``"{position}: {token}"``."""
    return [f"{i}: {t}" for i, t in enumerate(str_tokens)]


def generate_prompt_texts(spec: TaskSpec) -> Iterator[PromptText]:
    """Yield the task's prompts as text: the explicit list, or an endless seeded stream from templates.

    The stream cycles through the templates in order and draws words with ``random.Random(spec.seed)``,
    so the same task file and seed always give the same prompts, on any machine.
    """
    if spec.is_explicit:
        for p in spec.prompts:
            yield PromptText(p.clean, p.corrupted, p.correct, p.incorrect)
        return
    assert spec.corruption is not None
    rng = random.Random(spec.seed)
    index = 0
    while True:
        t = index % len(spec.templates)
        clean_t = spec.templates[t]
        corrupted_t = spec.corruption.apply(clean_t, t)
        chosen: dict[str, str] = {}
        used: dict[str, set[str]] = {}
        offsets = _offsets(" ".join((clean_t, corrupted_t, spec.correct, spec.incorrect)))
        for ph in dict.fromkeys(placeholder_names(clean_t + " " + corrupted_t)):
            list_name = spec.list_for(ph)
            taken = used.setdefault(list_name, set())
            words = spec.words_for(ph)
            low, high = min(offsets[ph]), max(offsets[ph])
            choices = [w for i, w in enumerate(words) if w not in taken
                       and (list_name in spec.cyclic or 0 <= i + low and i + high < len(words))]
            chosen[ph] = rng.choice(choices)
            taken.add(chosen[ph])
            for offset in offsets[ph]:
                if offset:
                    chosen[f"{ph}{offset:+d}"] = words[(words.index(chosen[ph]) + offset) % len(words)]
        clean, spans = _fill_with_spans(clean_t, chosen)
        filled = dict(clean=clean, corrupted=_fill(corrupted_t, chosen), template_index=t,
                      words=tuple(chosen.items()), spans=spans)
        if spec.answer_sets is None:
            yield PromptText(correct=_fill(spec.correct, chosen), incorrect=_fill(spec.incorrect, chosen), **filled)
        else:
            sets = spec.answer_sets
            candidates, word = dict(spec.words)[sets.answers], chosen[sets.correct.placeholder]
            yield PromptText(correct=f"{sets.correct.op} {spec.answer_text(word)}",
                             incorrect=f"{sets.incorrect.op} {spec.answer_text(word)}",
                             correct_set=tuple(map(spec.answer_text, sets.correct.select(candidates, word))),
                             incorrect_set=tuple(map(spec.answer_text, sets.incorrect.select(candidates, word))),
                             **filled)
        index += 1


def _key(match: re.Match[str]) -> str:
    """How a placeholder occurrence is keyed among the chosen words: ``N``, ``N+1``, ``N-2``."""
    return match.group(1) + (f"{int(match.group(2)):+d}" if match.group(2) and int(match.group(2)) else "")


def _fill(text: str, words: dict[str, str]) -> str:
    return PLACEHOLDER_RE.sub(lambda m: words[_key(m)], text)


def _fill_with_spans(template: str, words: dict[str, str]) -> tuple[str, tuple[tuple[str, int, int], ...]]:
    """The filled template, and where each placeholder's word landed in it: (placeholder, start, end)."""
    pieces: list[str] = []
    spans: list[tuple[str, int, int]] = []
    length = last = 0
    for match in PLACEHOLDER_RE.finditer(template):
        literal = template[last : match.start()]
        word = words[_key(match)]
        pieces += [literal, word]
        spans.append((_key(match), length + len(literal), length + len(literal) + len(word)))
        length += len(literal) + len(word)
        last = match.end()
    pieces.append(template[last:])
    return "".join(pieces), tuple(spans)


def build_prompts(spec: TaskSpec, tokenizer: Any, *, prepend_bos: bool = True) -> PromptSet:
    """Generate and tokenize the task's prompts, keeping only those that line up.

    Args:
        spec: the validated task.
        tokenizer: the model's Hugging Face tokenizer.
        prepend_bos: put the BOS token first, as TransformerLens does for GPT-2.

    Raises:
        TaskError: an answer is not a single token, an explicit prompt's clean and corrupted versions
            differ in length, or fewer than ``spec.n_prompts`` generated prompts line up.
    """
    check = _Checker(spec.source)
    if not spec.is_explicit:
        _check_answer_words(check, spec, tokenizer)

    def encode(text: str) -> list[int]:
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        if prepend_bos and tokenizer.bos_token_id is not None:
            ids.insert(0, tokenizer.bos_token_id)
        return ids

    kept: list[tuple[PromptText, list[int], list[int], tuple[int, ...], tuple[int, ...]]] = []
    seen: set[tuple[str, str]] = set()
    unequal = duplicates = 0
    attempts = spec.n_prompts * _ATTEMPTS_PER_PROMPT
    answer_fields = _answer_fields(spec)

    def answer_ids(prompt: str, texts: tuple[str, ...], field_name: str) -> tuple[int, ...]:
        fix = None
        found = []
        for text in texts:
            if spec.answer_sets is not None:
                fix = f"remove {text.strip()!r} from {field_name}"
            found.append(_single_token(check, field_name, prompt, text, tokenizer, fix=fix))
        return tuple(found)

    for i, text in enumerate(generate_prompt_texts(spec)):
        if len(kept) == spec.n_prompts or i >= attempts:
            break
        where = f"prompts[{i}]" if spec.is_explicit else "templates"
        correct_set, incorrect_set = text.answers
        correct = answer_ids(text.clean, correct_set, answer_fields[0].replace("prompts[i]", where))
        incorrect = answer_ids(text.clean, incorrect_set, answer_fields[1].replace("prompts[i]", where))
        if set(correct) & set(incorrect):
            check.fail(answer_fields[1].replace("prompts[i]", where), text.incorrect,
                       f"is the same token as the correct answer in {text.clean!r}",
                       "make the two answers differ")
        clean_ids, corrupted_ids = encode(text.clean), encode(text.corrupted)
        if len(clean_ids) != len(corrupted_ids):
            if spec.is_explicit:
                check.fail(f"{where}.corrupted", text.corrupted,
                           f"is {len(corrupted_ids)} tokens long but its clean prompt is {len(clean_ids)}; "
                           "positions must line up for patching", "make both versions the same number of tokens")
            unequal += 1
            continue
        if not spec.is_explicit:
            if (text.clean, text.corrupted) in seen:
                duplicates += 1
                continue
            seen.add((text.clean, text.corrupted))
        kept.append((text, clean_ids, corrupted_ids, correct, incorrect))

    if len(kept) < spec.n_prompts:
        check.fail("n_prompts", spec.n_prompts,
                   f"only {len(kept)} distinct prompts could be made in {attempts} tries "
                   f"({unequal} dropped because clean and corrupted differ in token length, "
                   f"{duplicates} repeats)",
                   "lower n_prompts, add words to the lists, or use words that are single tokens")
    return _to_prompt_set(kept, tokenizer, spec.metric)


def _answer_fields(spec: TaskSpec) -> tuple[str, str]:
    """Where a task file states its answers (for error messages)."""
    if spec.is_explicit:
        return "prompts[i].correct", "prompts[i].incorrect"
    if spec.answer_sets is not None:
        return f"words.{spec.answer_sets.answers}", f"words.{spec.answer_sets.answers}"
    return "correct", "incorrect"


def multi_token_words(spec: TaskSpec, tokenizer: Any) -> list[str]:
    """Every word that is not a single token where a template (clean or corrupted) puts it, described.

    Each placeholder occurrence of one generated prompt per template is refilled with every word of
    its list; the word (with the space before it, if the template has one) must be exactly one token.
    Multi-token words are allowed in a task, but they shift positions (such prompts are dropped when
    clean and corrupted lengths differ) and copy scores read only their first token.
    """
    if spec.is_explicit:
        return []
    assert spec.corruption is not None
    problems: list[str] = []
    first_of_template: dict[int, PromptText] = {}
    for text in generate_prompt_texts(spec):
        first_of_template.setdefault(text.template_index, text)
        if len(first_of_template) == len(spec.templates):
            break
    for t, text in sorted(first_of_template.items()):
        for which, template in (("templates", spec.templates[t]), ("corrupted", spec.corruption.apply(spec.templates[t], t))):
            filled, spans = _fill_with_spans(template, dict(text.words))
            for key, start, end in spans:
                placeholder = placeholder_names(f"[{key}]")[0]  # "N+1" -> "N"
                for word in spec.words_for(placeholder):
                    candidate = filled[:start] + word + filled[end:]
                    offsets = _token_offsets(tokenizer, candidate)
                    covering = [(a, b) for a, b in offsets if a < start + len(word) and b > start]
                    # one token, ending with the word and starting with it (or with the space before it)
                    alone = len(covering) == 1 and covering[0][1] == start + len(word) and (
                        covering[0][0] == start or (covering[0][0] == start - 1 and candidate[start - 1] == " "))
                    if not alone:
                        pieces = [candidate[a:b] for a, b in covering]
                        problems.append(f"words.{spec.list_for(placeholder)}: {word!r} is not one token of its own "
                                        f"as [{key}] in {which}[{t}], it is tokenized as {pieces}")
    return sorted(set(problems))


def _check_answer_words(check: _Checker, spec: TaskSpec, tokenizer: Any) -> None:
    """Name the offending word when a word list makes an answer more than one token, after the first
    prompt of each template (answer sets' candidates are checked as each prompt's sets are tokenized)."""
    first_of_template: dict[int, PromptText] = {}
    for text in generate_prompt_texts(spec):
        first_of_template.setdefault(text.template_index, text)
        if len(first_of_template) == len(spec.templates):
            break
    for field_name, answer in (("correct", spec.correct), ("incorrect", spec.incorrect)):
        matches = list(PLACEHOLDER_RE.finditer(answer))
        if len(matches) != 1:
            continue
        ph = matches[0].group(1)
        list_name = spec.list_for(ph)
        for prompt in first_of_template.values():
            for word in spec.words_for(ph):  # every word the list can put there
                text = answer.replace(matches[0].group(0), word)
                token, pieces = answer_token(tokenizer, prompt.clean, text)
                if token is None:
                    check.fail(f"words.{list_name}", word, f"{field_name} answer {text!r} is {len(pieces)} tokens "
                               f"{pieces} after the prompt {prompt.clean!r}, but answers must be single tokens",
                               f"remove {word!r} from words.{list_name}")


def answer_token(tokenizer: Any, prompt: str, answer: str) -> tuple[int | None, list[str]]:
    """The token the model predicts for ``answer`` after ``prompt``, and the pieces the tokenizer made of it.

    The answer is tokenized where it stands, after the prompt, so that tokenizers that mark a word's
    start inside the token (SentencePiece's ``▁Mary``) and those that carry its space (GPT-2's
    ``ĠMary``) both give the token the model would predict. Where the answer merges with the end of the
    prompt (GPT-2 reads " 17" + "00" as " 1700"), the answer's own single token is the one predicted.
    Returns ``(None, pieces)`` when the answer is more than one token.
    """
    prompt_ids = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    full_ids = list(tokenizer(prompt + answer, add_special_tokens=False)["input_ids"])
    if full_ids[: len(prompt_ids)] == prompt_ids:
        added = full_ids[len(prompt_ids) :]
    else:  # merged across the boundary: the answer on its own
        added = list(tokenizer(answer, add_special_tokens=False)["input_ids"])
    pieces = [tokenizer.decode([i]) for i in added]
    return (int(added[0]) if len(added) == 1 else None), pieces


def _single_token(check: _Checker, field_name: str, prompt: str, text: str, tokenizer: Any, *,
                  fix: str | None = None) -> int:
    token, pieces = answer_token(tokenizer, prompt, text)
    if token is None:
        check.fail(field_name, text, f"is {len(pieces)} tokens {pieces} after the prompt {prompt!r}, but answers "
                   "must be single tokens", fix or "choose an answer that is one token, with its leading space")
    return token  # type: ignore[return-value]


def _to_prompt_set(kept: list[tuple[PromptText, list[int], list[int], tuple[int, ...], tuple[int, ...]]],
                   tokenizer: Any, metric: MetricKind) -> PromptSet:
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    width = max(len(c) for _, c, _, _, _ in kept)

    def padded(rows: list[list[int]]) -> Tensor:
        return torch.tensor([r + [pad] * (width - len(r)) for r in rows], dtype=torch.long)

    def str_tokens(ids: list[int]) -> tuple[str, ...]:
        return tuple(tokenizer.decode([i]) for i in ids)

    texts = [k[0] for k in kept]
    return PromptSet(
        clean_prompts=tuple(t.clean for t in texts),
        corrupted_prompts=tuple(t.corrupted for t in texts),
        correct_answers=tuple(t.correct for t in texts),
        incorrect_answers=tuple(t.incorrect for t in texts),
        template_index=tuple(t.template_index for t in texts),
        clean_tokens=padded([k[1] for k in kept]),
        corrupted_tokens=padded([k[2] for k in kept]),
        metric=AnswerMetric.from_sets(metric, [k[3] for k in kept], [k[4] for k in kept]),
        final_pos=torch.tensor([len(k[1]) - 1 for k in kept], dtype=torch.long),
        clean_str_tokens=tuple(str_tokens(k[1]) for k in kept),
        corrupted_str_tokens=tuple(str_tokens(k[2]) for k in kept),
        word_positions=tuple(_word_positions(text, ids, correct, incorrect, tokenizer)
                             for text, ids, _, correct, incorrect in kept),
    )


def _word_positions(text: PromptText, ids: list[int], correct: tuple[int, ...], incorrect: tuple[int, ...],
                    tokenizer: Any) -> tuple[WordPosition, ...]:
    """Where the placeholders' words sit in the clean prompt ``ids`` (their first token), then any other
    position holding the correct or the incorrect answer token (tasks with one of each); in position order."""
    offsets = _token_offsets(tokenizer, text.clean)
    shift = len(ids) - len(offsets)  # the BOS token, when one was prepended
    found: dict[int, WordPosition] = {}
    for placeholder, start, end in text.spans:
        first = next((i for i, (a, b) in enumerate(offsets) if a < end and b > start), None)
        if first is not None:
            found.setdefault(first + shift, WordPosition(placeholder, first + shift, ids[first + shift]))
    answers = (("correct", correct[0]), ("incorrect", incorrect[0])) if len(correct) == len(incorrect) == 1 else ()
    for role, token in answers:
        for position in range(shift, len(ids)):
            if ids[position] == token:
                found.setdefault(position, WordPosition(role, position, token))
    return tuple(found[p] for p in sorted(found))


def _token_offsets(tokenizer: Any, text: str) -> list[tuple[int, int]]:
    """Character span of each token of ``text`` (without special tokens)."""
    try:
        return [tuple(span) for span in  # type: ignore[misc]
                tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]]
    except (NotImplementedError, KeyError):  # slow tokenizers: lay the decoded tokens end to end
        spans, start = [], 0
        for token in tokenizer(text, add_special_tokens=False)["input_ids"]:
            piece = len(tokenizer.decode([token]))
            spans.append((start, start + piece))
            start += piece
        return spans
