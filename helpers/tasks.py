"""Task files: ``params/<task>.yaml`` -> a validated, frozen :class:`TaskSpec` -> a :class:`PromptSet`.

A task says what behaviour to study: prompts on which the model should say one answer (the *correct*
one) rather than another (the *incorrect* one), and corrupted versions of those prompts on which the
evidence for the correct answer is removed. Every analysis in the suite compares the two.

A task is given either as templates to fill from word lists::

    name: ioi
    description: Indirect object identification ...
    model: gpt2
    templates:
      - "When [IO] and [S] went to the [PLACE], [S] gave a [OBJECT] to"
    corrupted: {swap: [IO, S]}        # or {replace: {S: C}}, or {templates: [...]}, one per template
    correct: " [IO]"                  # the exact text the model predicts: note the leading space
    incorrect: " [S]"
    words:                            # lists of words, written without spaces
      NAME: [Mary, John, ...]
      PLACE: [store, garden, ...]
      OBJECT: [ring, ...]
    placeholders: {IO: NAME, S: NAME}  # a placeholder not listed here draws from the list of its own name
    metric: logit_diff                # or prob_diff (see below)
    n_prompts: 64
    seed: 0

The metric is the correct answer's logit minus the incorrect one's (``logit_diff``, the default) or
its probability minus the incorrect one's (``prob_diff``). A task whose answer is a set of tokens
names the candidates and picks the sets by comparing with a placeholder's word in that list's order::

    metric:
      kind: prob_diff
      answers: YEAR                   # a word list: the candidate answers
      correct: "> [YY]"               # the candidates after this prompt's YY in the list
      incorrect: "<= [YY]"            # the others (ops: >, >=, <, <=)

(``correct`` and ``incorrect`` then live under ``metric``, not at the top level.)

or as an explicit list of prompts::

    prompts:
      - {clean: "When John and Mary went to the shops, John gave the bag to",
         corrupted: "When John and Mary went to the shops, Mary gave the bag to",
         correct: " Mary", incorrect: " John"}

Placeholders that draw from the same list get distinct words within a prompt (IO and S are two
different names). Validation happens in two stages, each failing with a :class:`TaskError` that names
the file, the field, the value and the fix: :func:`load_task` checks everything that needs no model
(keys, types, placeholders), and :func:`build_prompts` checks what needs the tokenizer (single-token
answers with their leading space, clean and corrupted prompts of equal token length, enough prompts).
"""

from __future__ import annotations

import difflib
import random
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, NoReturn

import torch
import yaml
from jaxtyping import Int
from torch import Tensor

from helpers.metrics import METRIC_KINDS, AnswerMetric, MetricKind
from helpers.paths import PARAMS_DIR

# [NAME], or [NAME+k] / [NAME-k]: the word k places after (before) NAME's word in NAME's word list.
PLACEHOLDER_RE = re.compile(r"\[([A-Za-z][A-Za-z0-9_]*)([+-][0-9]+)?\]")
TASK_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
CorruptionKind = Literal["swap", "replace", "templates"]

_GENERATED_KEYS = ("templates", "corrupted", "correct", "incorrect", "words", "placeholders")
_ALLOWED_KEYS = (
    "name", "description", "model", "n_prompts", "seed", "answer_space", "metric", "cyclic", "prompts",
    *_GENERATED_KEYS,
)
_METRIC_KEYS = ("kind", "answers", "correct", "incorrect")
_COMPARISONS: dict[str, Any] = {
    ">": lambda a, b: a > b, ">=": lambda a, b: a >= b, "<": lambda a, b: a < b, "<=": lambda a, b: a <= b,
}
_RULE_RE = re.compile(r"^\s*(>=|<=|>|<)\s*\[([A-Za-z][A-Za-z0-9_]*)\]\s*$")
_PROMPT_KEYS = ("clean", "corrupted", "correct", "incorrect")
# Generation tries this many candidates per wanted prompt before giving up on finding enough.
_ATTEMPTS_PER_PROMPT = 50


class TaskError(ValueError):
    """A task file (or a task argument) is wrong; the message says where, what and how to fix it."""

    def __init__(self, source: str, field: str, value: Any, problem: str, fix: str):
        self.source, self.field, self.value = source, field, value
        shown = repr(value)
        if len(shown) > 200:
            shown = shown[:197] + "..."
        super().__init__(f"{source}: field '{field}' = {shown}: {problem}.\n  Fix: {fix}")


@dataclass(frozen=True)
class Corruption:
    """How a clean template becomes its corrupted template.

    ``swap`` exchanges two placeholders everywhere; ``replace`` renames placeholders (the new one
    draws its own word, e.g. a third name); ``templates`` gives one corrupted template per clean one.
    """

    kind: CorruptionKind
    swap: tuple[str, str] | None = None
    replace: tuple[tuple[str, str], ...] = ()
    templates: tuple[str, ...] = ()

    def apply(self, template: str, index: int) -> str:
        if self.kind == "templates":
            return self.templates[index]
        if self.kind == "swap":
            assert self.swap is not None
            a, b = self.swap
            marker = "\x00"
            return template.replace(f"[{a}]", marker).replace(f"[{b}]", f"[{a}]").replace(marker, f"[{b}]")
        mapping = dict(self.replace)
        return PLACEHOLDER_RE.sub(lambda m: f"[{mapping.get(m.group(1), m.group(1))}{m.group(2) or ''}]", template)

    def to_dict(self) -> dict[str, Any]:
        if self.kind == "swap":
            return {"swap": list(self.swap or ())}
        if self.kind == "replace":
            return {"replace": dict(self.replace)}
        return {"templates": list(self.templates)}


@dataclass(frozen=True)
class AnswerRule:
    """Which candidates are answers: those ``op`` the placeholder's word, in the candidate list's order."""

    op: str
    placeholder: str

    def select(self, candidates: tuple[str, ...], word: str) -> tuple[str, ...]:
        here = candidates.index(word)
        return tuple(c for i, c in enumerate(candidates) if _COMPARISONS[self.op](i, here))

    def __str__(self) -> str:
        return f"{self.op} [{self.placeholder}]"


@dataclass(frozen=True)
class AnswerSets:
    """A metric over sets of answers: candidates from a word list, split by the prompt's own word."""

    answers: str  # the word list of candidates
    correct: AnswerRule
    incorrect: AnswerRule


@dataclass(frozen=True)
class ExplicitPrompt:
    """One prompt given literally in the task file."""

    clean: str
    corrupted: str
    correct: str
    incorrect: str


@dataclass(frozen=True)
class TaskSpec:
    """A validated task. Build it with :func:`load_task`; it round-trips through :meth:`to_dict`."""

    name: str
    description: str
    model: str
    source: str
    n_prompts: int
    seed: int = 0
    answer_space: bool = True
    templates: tuple[str, ...] = ()
    corruption: Corruption | None = None
    correct: str = ""
    incorrect: str = ""
    words: tuple[tuple[str, tuple[str, ...]], ...] = ()
    placeholders: tuple[tuple[str, str], ...] = ()
    prompts: tuple[ExplicitPrompt, ...] = field(default=())
    metric: MetricKind = "logit_diff"
    answer_sets: AnswerSets | None = None
    cyclic: tuple[str, ...] = ()  # word lists whose [NAME+k] offsets wrap around (months, weekdays)

    @property
    def is_explicit(self) -> bool:
        return bool(self.prompts)

    def list_for(self, placeholder: str) -> str:
        """The name of the word list a placeholder draws from."""
        return dict(self.placeholders).get(placeholder, placeholder)

    def words_for(self, placeholder: str) -> tuple[str, ...]:
        return dict(self.words)[self.list_for(placeholder)]

    def with_overrides(
        self, *, model: str | None = None, n_prompts: int | None = None, seed: int | None = None
    ) -> TaskSpec:
        """A copy with the run's overrides applied (``MODEL=``, ``N=``, ``SEED=``), validated again."""
        data = self.to_dict()
        if model is not None:
            data["model"] = model
        if n_prompts is not None:
            data["n_prompts"] = n_prompts
        if seed is not None:
            data["seed"] = seed
        return parse_task(data, source=self.source)

    def to_dict(self) -> dict[str, Any]:
        """The task in its YAML form (what the runner injects into templates)."""
        data: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "model": self.model,
            "n_prompts": self.n_prompts,
            "seed": self.seed,
            "answer_space": self.answer_space,
        }
        if self.answer_sets is not None:
            sets = self.answer_sets
            data["metric"] = {"kind": self.metric, "answers": sets.answers, "correct": str(sets.correct),
                              "incorrect": str(sets.incorrect)}
        else:
            data["metric"] = self.metric
        if self.is_explicit:
            data["prompts"] = [vars(p).copy() for p in self.prompts]
            return data
        assert self.corruption is not None
        if self.cyclic:
            data["cyclic"] = list(self.cyclic)
        data.update(
            templates=list(self.templates),
            corrupted=self.corruption.to_dict(),
            words={name: list(ws) for name, ws in self.words},
            placeholders=dict(self.placeholders),
        )
        if self.answer_sets is None:
            data.update(correct=self.correct, incorrect=self.incorrect)
        return data

    def answer_text(self, word: str) -> str:
        """The text the model predicts for a candidate answer word (with its leading space, if any)."""
        return f" {word}" if self.answer_space else word


# ---------------------------------------------------------------------------------------------------
# Loading and validation (no model needed)
# ---------------------------------------------------------------------------------------------------


def resolve_task_path(task: str | Path) -> Path:
    """Turn a ``TASK`` argument into a task file: a name in ``params/`` or a path to a YAML file.

    Raises:
        TaskError: for anything else, including names that would escape ``params/``.
    """
    text = str(task)
    looks_like_path = "/" in text or "\\" in text or text.endswith((".yaml", ".yml"))
    if not looks_like_path:
        if not TASK_NAME_RE.match(text):
            raise TaskError(
                "TASK", "TASK", text, "not a task name (lowercase letters, digits, '_' and '-')",
                f"use one of: {', '.join(available_tasks()) or '(none in params/)'}, "
                "or a path to a .yaml file",
            )
        path = PARAMS_DIR / f"{text}.yaml"
        if not path.is_file():
            raise TaskError(
                "TASK", "TASK", text, f"there is no params/{text}.yaml",
                f"use one of: {', '.join(available_tasks()) or '(none)'}, or a path to a .yaml file",
            )
        return path
    path = Path(text).expanduser()
    if path.suffix not in (".yaml", ".yml") or not path.is_file():
        raise TaskError(
            "TASK", "TASK", text, "not an existing .yaml file",
            "give a task name from params/ or the path of an existing task file",
        )
    return path.resolve()


def available_tasks() -> list[str]:
    return sorted(p.stem for p in PARAMS_DIR.glob("*.yaml"))


def load_task(task: str | Path | Mapping[str, Any]) -> TaskSpec:
    """Load and validate a task from a name in ``params/``, a YAML path, or an already-parsed dict.

    Raises:
        TaskError: naming the file, the field, the value and the fix.
    """
    if isinstance(task, Mapping):
        return parse_task(task, source="<task dict>")
    path = resolve_task_path(task)
    source = _display_path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise TaskError(source, "(file)", path.name, f"not valid YAML ({err})", "fix the YAML syntax") from None
    if not isinstance(data, Mapping):
        raise TaskError(source, "(file)", data, "a task file must be a mapping of keys", "see README.md, 'Task files'")
    return parse_task(data, source=source)


def _display_path(path: Path) -> str:
    try:
        return str(path.relative_to(PARAMS_DIR.parent))
    except ValueError:
        return str(path)


def parse_task(data: Mapping[str, Any], *, source: str) -> TaskSpec:
    """Validate a task's YAML form and freeze it."""
    check = _Checker(source)
    unknown = [k for k in data if k not in _ALLOWED_KEYS]
    for key in unknown:
        close = difflib.get_close_matches(str(key), _ALLOWED_KEYS, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"allowed keys: {', '.join(_ALLOWED_KEYS)}"
        check.fail(str(key), data[key], "unknown key", f"remove it; {hint}")
    for key in ("name", "description", "model"):
        if key not in data:
            check.fail(key, None, "missing", f"add '{key}: ...' to the task file")
    name = check.string("name", data["name"])
    if not TASK_NAME_RE.match(name):
        check.fail("name", name, "must be lowercase letters, digits, '_' or '-' (it names the output folder)",
                   "rename it, e.g. 'my_task'")
    description = check.string("description", data["description"])
    model = check.string("model", data["model"])
    seed = check.integer("seed", data.get("seed", 0), minimum=0)
    answer_space = data.get("answer_space", True)
    if not isinstance(answer_space, bool):
        check.fail("answer_space", answer_space, "must be true or false", "write answer_space: true")

    has_prompts = "prompts" in data
    generated = [k for k in _GENERATED_KEYS if k in data]
    if has_prompts and generated:
        check.fail(generated[0], data[generated[0]], "a task gives either 'prompts' or templates, not both",
                   "remove 'prompts' or the template keys")
    if not has_prompts and "templates" not in data:
        check.fail("templates", None, "missing: a task needs 'templates' (with word lists) or 'prompts'",
                   "add 'templates: [...]' or an explicit 'prompts:' list")

    metric, raw_sets = _parse_metric(check, data.get("metric", "logit_diff"), has_prompts)
    common = dict(name=name, description=description, model=model, source=source, seed=seed,
                  answer_space=answer_space, metric=metric)
    if has_prompts:
        prompts = _parse_explicit_prompts(check, data["prompts"], answer_space)
        n_prompts = check.integer("n_prompts", data.get("n_prompts", len(prompts)), minimum=1)
        if n_prompts > len(prompts):
            listed = f"{len(prompts)} prompt" + ("s are" if len(prompts) != 1 else " is")
            check.fail("n_prompts", n_prompts, f"only {listed} listed",
                       f"set n_prompts to at most {len(prompts)} or list more prompts")
        return TaskSpec(**common, n_prompts=n_prompts, prompts=prompts)
    return _parse_generated(check, data, common, raw_sets)


def _parse_metric(check: _Checker, raw: Any, explicit: bool) -> tuple[MetricKind, Mapping[str, Any] | None]:
    """The metric's kind, and its answer-set part (checked later, against the word lists) if any."""
    kinds = " or ".join(METRIC_KINDS)
    if isinstance(raw, str):
        if raw not in METRIC_KINDS:
            check.fail("metric", raw, f"unknown metric; use {kinds}", "write metric: logit_diff")
        return raw, None  # type: ignore[return-value]
    if not isinstance(raw, Mapping):
        check.fail("metric", raw, f"must be {kinds}, or a mapping with kind, answers, correct and incorrect",
                   "write metric: logit_diff (see README.md, 'Task files')")
    for key in raw:
        if key not in _METRIC_KEYS:
            check.fail(f"metric.{key}", raw[key], "unknown key", f"use only {', '.join(_METRIC_KEYS)}")
    kind = raw.get("kind", "logit_diff")
    if kind not in METRIC_KINDS:
        check.fail("metric.kind", kind, f"unknown metric; use {kinds}", "write kind: prob_diff")
    if set(raw) <= {"kind"}:
        return kind, None
    if explicit:
        check.fail("metric.answers", raw.get("answers"), "answer sets need templates and word lists",
                   "give each explicit prompt its correct and incorrect answer instead")
    for key in ("answers", "correct", "incorrect"):
        if key not in raw:
            check.fail(f"metric.{key}", None, "missing: answer sets need answers, correct and incorrect",
                       'e.g. metric: {kind: prob_diff, answers: YEAR, correct: "> [YY]", incorrect: "<= [YY]"}')
    return kind, raw


def _parse_answer_sets(check: _Checker, raw: Mapping[str, Any], templates: tuple[str, ...],
                       words: tuple[tuple[str, tuple[str, ...]], ...],
                       placeholders: tuple[tuple[str, str], ...]) -> AnswerSets:
    lists = dict(words)
    answers = raw["answers"]
    if answers not in lists:
        check.fail("metric.answers", answers, "no such word list", f"use one of: {', '.join(lists)}")
    rules = []
    for key in ("correct", "incorrect"):
        match = _RULE_RE.match(str(raw[key]))
        if match is None:
            check.fail(f"metric.{key}", raw[key], "must compare with a placeholder, like \"> [YY]\"",
                       f"use one of {', '.join(_COMPARISONS)} followed by a placeholder of every template")
        rule = AnswerRule(match.group(1), match.group(2))
        for i, template in enumerate(templates):
            if rule.placeholder not in placeholder_names(template):
                check.fail(f"metric.{key}", raw[key], f"[{rule.placeholder}] does not occur in templates[{i}]",
                           "compare with a placeholder that every template uses")
        list_name = dict(placeholders).get(rule.placeholder, rule.placeholder)
        outside = [w for w in lists.get(list_name, ()) if w not in lists[answers]]
        if outside:
            check.fail(f"words.{list_name}", outside, f"[{rule.placeholder}]'s words must be among the candidate "
                       f"answers (words.{answers}) to be compared with them", f"add them to words.{answers}")
        rules.append(rule)
    correct, incorrect = rules
    if correct.placeholder != incorrect.placeholder:
        check.fail("metric.incorrect", raw["incorrect"], f"compares with a different placeholder than metric.correct "
                   f"([{correct.placeholder}])", f"compare both with [{correct.placeholder}]")
    candidates = lists[answers]
    for word in lists[dict(placeholders).get(correct.placeholder, correct.placeholder)]:
        good, bad = correct.select(candidates, word), incorrect.select(candidates, word)
        if not good or not bad:
            check.fail("metric", dict(raw), f"leaves no correct or no incorrect answer when [{correct.placeholder}] "
                       f"is {word!r}", f"remove {word!r} from its word list")
        if set(good) & set(bad):
            check.fail("metric", dict(raw), "the correct and incorrect answers overlap",
                       "use complementary comparisons, like \"> [YY]\" and \"<= [YY]\"")
    return AnswerSets(answers, correct, incorrect)


def _parse_explicit_prompts(check: _Checker, raw: Any, answer_space: bool) -> tuple[ExplicitPrompt, ...]:
    if not isinstance(raw, list) or not raw:
        check.fail("prompts", raw, "must be a non-empty list", "list prompts as {clean, corrupted, correct, incorrect}")
    prompts = []
    for i, item in enumerate(raw):
        where = f"prompts[{i}]"
        if not isinstance(item, Mapping):
            check.fail(where, item, "must be a mapping", "write {clean: ..., corrupted: ..., correct: ..., incorrect: ...}")
        for key in item:
            if key not in _PROMPT_KEYS:
                check.fail(f"{where}.{key}", item[key], "unknown key", f"use only {', '.join(_PROMPT_KEYS)}")
        for key in _PROMPT_KEYS:
            if key not in item:
                check.fail(f"{where}.{key}", None, "missing", f"add '{key}' to this prompt")
        values = {k: check.string(f"{where}.{k}", item[k], strip=k in ("clean", "corrupted")) for k in _PROMPT_KEYS}
        for key in ("correct", "incorrect"):
            check.answer(f"{where}.{key}", values[key], answer_space)
        if PLACEHOLDER_RE.search(values["clean"] + values["corrupted"]):
            check.fail(f"{where}.clean", values["clean"], "explicit prompts cannot hold [PLACEHOLDERS]",
                       "write the words in, or use 'templates' with word lists")
        prompts.append(ExplicitPrompt(**values))
    return tuple(prompts)


def _parse_generated(check: _Checker, data: Mapping[str, Any], common: dict[str, Any],
                     raw_sets: Mapping[str, Any] | None) -> TaskSpec:
    raw_templates = data["templates"]
    if isinstance(raw_templates, str):
        raw_templates = [raw_templates]
    if not isinstance(raw_templates, list) or not raw_templates:
        check.fail("templates", raw_templates, "must be a non-empty list of strings", "templates: [\"When [A] ...\"]")
    templates = tuple(check.string(f"templates[{i}]", t, strip=True) for i, t in enumerate(raw_templates))
    answer_keys = ("correct", "incorrect") if raw_sets is None else ()
    for key in ("corrupted", *answer_keys, "words"):
        if key not in data:
            check.fail(key, None, "missing (needed with 'templates')", f"add '{key}:' (see README.md, 'Task files')")
    if raw_sets is not None:
        for key in ("correct", "incorrect"):
            if key in data:
                check.fail(key, data[key], "the metric's answer sets already say which answers are correct",
                           f"remove the top-level '{key}' (it belongs under 'metric')")
    correct = check.answer("correct", data["correct"], common["answer_space"]) if answer_keys else ""
    incorrect = check.answer("incorrect", data["incorrect"], common["answer_space"]) if answer_keys else ""
    words = _parse_words(check, data["words"])
    placeholders = _parse_placeholder_map(check, data.get("placeholders", {}), words)
    corruption = _parse_corruption(check, data["corrupted"], templates)
    answer_sets = None if raw_sets is None else _parse_answer_sets(check, raw_sets, templates, words, placeholders)
    cyclic = _parse_cyclic(check, data.get("cyclic", []), words)

    corrupted_templates = tuple(corruption.apply(t, i) for i, t in enumerate(templates))
    for field_name, texts in (("templates", templates), ("corrupted", corrupted_templates),
                              ("correct", (correct,)), ("incorrect", (incorrect,))):
        for text in texts:
            for ph in placeholder_names(text):
                if dict(placeholders).get(ph, ph) not in dict(words):
                    check.fail(field_name, text, f"placeholder [{ph}] has no word list",
                               f"add 'words: {{{ph}: [...]}}' or map it in 'placeholders: {{{ph}: LIST}}'")
    for i, (clean, corrupted) in enumerate(zip(templates, corrupted_templates)):
        for answer_field, answer in (("correct", correct), ("incorrect", incorrect)):
            for ph in placeholder_names(answer):
                if ph not in placeholder_names(clean):
                    check.fail(answer_field, answer, f"[{ph}] does not occur in templates[{i}], so it has no word there",
                               f"use a placeholder of templates[{i}] or add [{ph}] to it")
        if clean == corrupted:
            check.fail("corrupted", corruption.to_dict(), f"leaves templates[{i}] unchanged",
                       "corrupt something that occurs in every template")
        _check_list_sizes(check, clean + corrupted, placeholders, words)
        _check_offsets(check, " ".join((clean, corrupted, correct, incorrect)), placeholders, words, cyclic)

    n_prompts = check.integer("n_prompts", data.get("n_prompts", 32), minimum=1)
    return TaskSpec(
        **common, n_prompts=n_prompts, templates=templates, corruption=corruption, correct=correct,
        incorrect=incorrect, words=words, placeholders=placeholders, answer_sets=answer_sets, cyclic=cyclic,
    )


def placeholder_names(text: str) -> list[str]:
    """The placeholders of ``text`` by name, in order, without offsets (``[N+1]`` counts as ``N``)."""
    return [m.group(1) for m in PLACEHOLDER_RE.finditer(text)]


def _offsets(text: str) -> dict[str, list[int]]:
    """The offsets each placeholder is used with in ``text`` (0 for the plain ``[NAME]``)."""
    found: dict[str, list[int]] = {}
    for m in PLACEHOLDER_RE.finditer(text):
        found.setdefault(m.group(1), []).append(int(m.group(2) or 0))
    return found


def _parse_cyclic(check: _Checker, raw: Any, words: tuple[tuple[str, tuple[str, ...]], ...]) -> tuple[str, ...]:
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list):
        check.fail("cyclic", raw, "must be a list of word-list names", "cyclic: [MONTH]")
    for name in raw:
        if name not in dict(words):
            check.fail("cyclic", name, "no such word list", f"use one of: {', '.join(dict(words))}")
    return tuple(raw)


def _check_offsets(check: _Checker, text: str, placeholders: tuple[tuple[str, str], ...],
                   words: tuple[tuple[str, tuple[str, ...]], ...], cyclic: tuple[str, ...]) -> None:
    """A placeholder used as [N+k] needs a list long enough for some word to have all its neighbours."""
    for ph, offsets in _offsets(text).items():
        list_name = dict(placeholders).get(ph, ph)
        span = max(offsets) - min(offsets)
        if span and list_name not in cyclic and span >= len(dict(words)[list_name]):
            check.fail(f"words.{list_name}", list(dict(words)[list_name]),
                       f"[{ph}] is used {span} places apart, but the list has only {len(dict(words)[list_name])} words",
                       f"list more words, or add {list_name} to 'cyclic' if the list wraps around")


def _parse_words(check: _Checker, raw: Any) -> tuple[tuple[str, tuple[str, ...]], ...]:
    if not isinstance(raw, Mapping) or not raw:
        check.fail("words", raw, "must map list names to lists of words", "words: {NAME: [Mary, John]}")
    lists = []
    for list_name, ws in raw.items():
        where = f"words.{list_name}"
        if not isinstance(list_name, str) or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", list_name):
            check.fail("words", list_name, "list names are letters, digits and '_'", "rename the list, e.g. NAME")
        if not isinstance(ws, list) or not ws:
            check.fail(where, ws, "must be a non-empty list of words", f"{where}: [word1, word2]")
        clean_words = []
        for w in ws:
            if isinstance(w, (int, float)) and not isinstance(w, bool):
                w = str(w)
            word = check.string(where, w)
            if word != word.strip() or not word:
                check.fail(where, w, "words are written without surrounding spaces",
                           "write the word bare; the template supplies the space before it")
            clean_words.append(word)
        duplicates = sorted({w for w in clean_words if clean_words.count(w) > 1})
        if duplicates:
            check.fail(where, duplicates, "words are listed twice", "remove the duplicates")
        lists.append((list_name, tuple(clean_words)))
    return tuple(lists)


def _parse_placeholder_map(
    check: _Checker, raw: Any, words: tuple[tuple[str, tuple[str, ...]], ...]
) -> tuple[tuple[str, str], ...]:
    if not isinstance(raw, Mapping):
        check.fail("placeholders", raw, "must map placeholders to word lists", "placeholders: {IO: NAME, S: NAME}")
    names = dict(words)
    for ph, list_name in raw.items():
        if list_name not in names:
            check.fail(f"placeholders.{ph}", list_name, "no such word list",
                       f"use one of: {', '.join(names)}")
    return tuple((str(k), str(v)) for k, v in raw.items())


def _parse_corruption(check: _Checker, raw: Any, templates: tuple[str, ...]) -> Corruption:
    if not isinstance(raw, Mapping) or len(raw) != 1 or next(iter(raw)) not in ("swap", "replace", "templates"):
        check.fail("corrupted", raw, "must be exactly one of swap, replace or templates",
                   "e.g. corrupted: {swap: [IO, S]}, {replace: {S: C}} or {templates: [...]}")
    kind, value = next(iter(raw.items()))
    if kind == "swap":
        if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value)
                and value[0] != value[1]):
            check.fail("corrupted.swap", value, "must name two different placeholders", "corrupted: {swap: [IO, S]}")
        for i, t in enumerate(templates):
            for ph in value:
                if f"[{ph}]" not in t:
                    check.fail("corrupted.swap", value, f"[{ph}] does not occur in templates[{i}]",
                               "swap placeholders that every template uses")
        return Corruption("swap", swap=(value[0], value[1]))
    if kind == "replace":
        if not isinstance(value, Mapping) or not value or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            check.fail("corrupted.replace", value, "must map placeholders to new placeholders",
                       "corrupted: {replace: {S: C}}")
        for i, t in enumerate(templates):
            if not any(f"[{ph}]" in t for ph in value):
                check.fail("corrupted.replace", dict(value), f"none of its placeholders occurs in templates[{i}]",
                           "replace placeholders that every template uses")
        return Corruption("replace", replace=tuple(value.items()))
    if not isinstance(value, list) or len(value) != len(templates):
        check.fail("corrupted.templates", value, f"must list one corrupted template per template ({len(templates)})",
                   "give the corrupted templates in the same order as 'templates'")
    return Corruption("templates", templates=tuple(
        check.string(f"corrupted.templates[{i}]", t, strip=True) for i, t in enumerate(value)))


def _check_list_sizes(check: _Checker, text: str, placeholders: tuple[tuple[str, str], ...],
                      words: tuple[tuple[str, tuple[str, ...]], ...]) -> None:
    mapping, lists = dict(placeholders), dict(words)
    users: dict[str, set[str]] = {}
    for ph in placeholder_names(text):
        users.setdefault(mapping.get(ph, ph), set()).add(ph)
    for list_name, phs in users.items():
        if len(lists[list_name]) < len(phs):
            check.fail(f"words.{list_name}", list(lists[list_name]),
                       f"{len(phs)} placeholders ({', '.join(sorted(phs))}) need distinct words from it",
                       f"list at least {len(phs)} words")


class _Checker:
    """Raises :class:`TaskError` for one source file."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, field_name: str, value: Any, problem: str, fix: str) -> NoReturn:
        raise TaskError(self.source, field_name, value, problem, fix)

    def string(self, field_name: str, value: Any, *, strip: bool = False) -> str:
        if not isinstance(value, str) or not value:
            self.fail(field_name, value, "must be a non-empty string", f"write {field_name}: \"...\"")
        if strip and value != value.rstrip():
            self.fail(field_name, value, "prompts must not end with whitespace (GPT-2-style tokenizers "
                      "then predict a word without its leading space)", "remove the trailing space")
        return value

    def integer(self, field_name: str, value: Any, *, minimum: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self.fail(field_name, value, f"must be a whole number >= {minimum}", f"write {field_name}: {max(minimum, 1)}")
        return value

    def answer(self, field_name: str, value: Any, answer_space: bool) -> str:
        text = self.string(field_name, value)
        if answer_space and not text.startswith(" "):
            self.fail(field_name, text, "answers are the exact text the model predicts, and after a word "
                      "that text starts with a space", f"write {field_name}: \" {text}\" (quoted), or set "
                      "answer_space: false if the answer really follows without a space")
        return text


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
