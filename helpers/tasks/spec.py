"""Task files: ``params/<task>.yaml`` -> a validated, frozen :class:`TaskSpec`, with no model and no torch
(so a bad file is reported in a moment); :mod:`helpers.tasks.prompts` turns a spec into a :class:`PromptSet`.

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
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NoReturn

import yaml

from helpers.errors import SuiteError
from helpers.paths import PARAMS_DIR

# The task metrics a task file can name (helpers.tasks.metrics computes them).
MetricKind = Literal["logit_diff", "prob_diff"]
METRIC_KINDS: tuple[MetricKind, ...] = ("logit_diff", "prob_diff")
METRIC_NAMES: dict[str, str] = {"logit_diff": "logit difference", "prob_diff": "probability difference"}

# [NAME], or [NAME+k] / [NAME-k]: the word k places after (before) NAME's word in NAME's word list.
PLACEHOLDER_RE = re.compile(r"\[([A-Za-z][A-Za-z0-9_]*)([+-][0-9]+)?\]")
TASK_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
# Folder names in notebooks/ the suite uses itself: no task may be called so (helpers.run.outputs).
RESERVED_TASK_NAMES = ("compare", "sweep", "failed", "earlier")
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


class TaskError(SuiteError, ValueError):
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

    @property
    def answer_in_prompt(self) -> bool:
        """Is the correct answer a word of its prompt (IOI's indirect object), rather than a word the model
        must produce (a sequence's next item, a year after the one given)?

        Templates: the correct answer's placeholder, with its offset, occurs in every clean template
        (``" [IO]"`` in IOI's; ``" [M+4]"`` is in no template of months). Explicit prompts: the correct
        answer is a word of every clean prompt. Answer sets: never (the answer is a set of candidates).
        """
        if self.answer_sets is not None:
            return False
        if self.is_explicit:
            return all(re.search(rf"(?<!\w){re.escape(p.correct.strip())}(?!\w)", p.clean) is not None
                       for p in self.prompts if p.correct.strip())
        keys = [m.group(0) for m in PLACEHOLDER_RE.finditer(self.correct)]
        return bool(keys) and all(key in template for template in self.templates for key in keys)

    @property
    def sequence_lists(self) -> tuple[str, ...]:
        """The word lists the task reads as ordered sequences: those a placeholder with an offset draws from
        (``[M+1]``: months, days, numbers, letters), in the order of :attr:`words`."""
        texts = [*self.templates, self.correct, self.incorrect]
        if self.corruption is not None:
            texts += [self.corruption.apply(t, i) for i, t in enumerate(self.templates)]
        offset = {self.list_for(m.group(1)) for text in texts for m in PLACEHOLDER_RE.finditer(text) if m.group(2)}
        return tuple(name for name, _ in self.words if name in offset)

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
        if text in RESERVED_TASK_NAMES:
            raise TaskError("TASK", "TASK", text, f"'{text}' names one of the suite's own folders, not a task",
                            f"use one of: {', '.join(available_tasks()) or '(none)'}"
                            + (" (for the comparison: make compare TASKS=...)" if text == "compare" else ""))
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
    if name in RESERVED_TASK_NAMES:
        check.fail("name", name, f"is reserved for the suite's own folders in notebooks/ "
                   f"({', '.join(RESERVED_TASK_NAMES)})", f"rename it, e.g. '{name}_task'")
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
