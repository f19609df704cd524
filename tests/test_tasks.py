"""Task files: validation messages, deterministic generation, and the shipped IOI task."""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from helpers.tasks.prompts import (
    PromptSet,
    TaskError,
    build_prompts,
    generate_prompt_texts,
    load_task,
    multi_token_words,
    parse_task,
    resolve_task_path,
)

VALID: dict[str, Any] = {
    "name": "mini",
    "description": "A small IOI-like task.",
    "model": "gpt2",
    "templates": ["When [IO] and [S] went to the [PLACE], [S] gave a ring to"],
    "corrupted": {"swap": ["IO", "S"]},
    "correct": " [IO]",
    "incorrect": " [S]",
    "placeholders": {"IO": "NAME", "S": "NAME"},
    "words": {"NAME": ["Mary", "John", "Tom", "James"], "PLACE": ["store", "park"]},
    "n_prompts": 6,
    "seed": 1,
}


def write_task(tmp_path: Path, data: dict[str, Any], name: str = "mini.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def with_changes(**changes: Any) -> dict[str, Any]:
    data = {k: v for k, v in VALID.items()}
    for key, value in changes.items():
        if value is None:
            data.pop(key)
        else:
            data[key] = value
    return data


def assert_task_error(err: pytest.ExceptionInfo[TaskError], field: str, value_fragment: str, fix_fragment: str) -> None:
    message = str(err.value)
    assert err.value.field == field, message
    assert f"field '{field}'" in message
    assert value_fragment in message, message
    assert "Fix:" in message and fix_fragment in message, message


# --- stage 1: no model needed ---------------------------------------------------------------------


def test_valid_task_loads_and_round_trips(tmp_path: Path) -> None:
    spec = load_task(write_task(tmp_path, VALID))
    assert spec.name == "mini" and spec.n_prompts == 6 and spec.seed == 1
    assert spec.words_for("IO") == ("Mary", "John", "Tom", "James")
    assert load_task(spec.to_dict()).to_dict() == spec.to_dict()


@pytest.mark.parametrize(
    ("changes", "field", "value", "fix"),
    [
        ({"n_prompt": 5}, "n_prompt", "5", "did you mean 'n_prompts'"),
        ({"model": None}, "model", "None", "add 'model: ...'"),
        ({"n_prompts": "ten"}, "n_prompts", "'ten'", "n_prompts: 1"),
        ({"n_prompts": 0}, "n_prompts", "0", "n_prompts: 1"),
        ({"seed": 1.5}, "seed", "1.5", "seed:"),
        ({"name": "../escape"}, "name", "'../escape'", "rename it"),
        ({"templates": ["When [IO] and [S] met [FRIEND], [S] gave a ring to"]}, "templates",
         "[FRIEND]", "words: {FRIEND"),
        ({"correct": " [BOSS]"}, "correct", "[BOSS]", "add 'words: {BOSS"),
        ({"correct": "[IO]"}, "correct", "'[IO]'", 'write correct: " [IO]"'),
        ({"words": {"NAME": ["Mary", " John"], "PLACE": ["store"]}}, "words.NAME", "' John'",
         "write the word bare"),
        ({"words": {"NAME": ["Mary"], "PLACE": ["store"]}}, "words.NAME", "['Mary']", "at least 2 words"),
        ({"placeholders": {"IO": "NAMES", "S": "NAME"}}, "placeholders.IO", "'NAMES'", "use one of: NAME"),
        ({"corrupted": {"swap": ["IO", "X"]}}, "corrupted.swap", "['IO', 'X']", "every template uses"),
        ({"corrupted": {"shuffle": ["IO", "S"]}}, "corrupted", "shuffle", "{swap: [IO, S]}"),
        ({"templates": ["When [IO] and [S] went out, [S] gave a ring to "]}, "templates[0]",
         "to '", "remove the trailing space"),
        ({"prompts": [{"clean": "a", "corrupted": "b", "correct": " c", "incorrect": " d"}]}, "templates",
         "[", "remove 'prompts'"),
        ({"templates": None}, "templates", "None", "add 'templates"),
        ({"metric": "accuracy"}, "metric", "'accuracy'", "metric: logit_diff"),
        ({"metric": {"kind": "prob_diff", "answers": "NAME", "correct": "> [IO]"}}, "metric.incorrect", "None",
         "kind: prob_diff, answers"),
        ({"metric": {"kind": "prob_diff", "answers": "NAME", "correct": "after [IO]", "incorrect": "<= [IO]"},
          "correct": None, "incorrect": None}, "metric.correct", "'after [IO]'", "one of >, >=, <, <="),
        ({"metric": {"kind": "prob_diff", "answers": "NAME", "correct": "> [IO]", "incorrect": "<= [IO]"}},
         "correct", "' [IO]'", "remove the top-level 'correct'"),
        ({"templates": ["When [IO] and [S] went out, [S] gave a ring to [IO+5]"], "correct": " [IO+1]"},
         "words.NAME", "'Mary'", "add NAME to 'cyclic'"),
        ({"cyclic": ["MONTH"]}, "cyclic", "'MONTH'", "use one of: NAME, PLACE"),
    ],
)
def test_each_validation_error_names_field_value_and_fix(
    tmp_path: Path, changes: dict[str, Any], field: str, value: str, fix: str
) -> None:
    path = write_task(tmp_path, with_changes(**changes))
    with pytest.raises(TaskError) as err:
        load_task(path)
    assert str(path) in str(err.value) or path.name in str(err.value)
    assert_task_error(err, field, value, fix)


def test_explicit_prompts_are_checked_for_leading_space() -> None:
    data = {"name": "demo", "description": "d", "model": "gpt2",
            "prompts": [{"clean": "When John and Mary went to the shops, John gave the bag to",
                         "corrupted": "When John and Mary went to the shops, Mary gave the bag to",
                         "correct": "Mary", "incorrect": " John"}]}
    with pytest.raises(TaskError) as err:
        parse_task(data, source="demo.yaml")
    assert_task_error(err, "prompts[0].correct", "'Mary'", 'write prompts[0].correct: " Mary"')


def test_invalid_yaml_is_reported_with_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(TaskError, match="not valid YAML"):
        load_task(path)


@pytest.mark.parametrize("task", ["../ioi", "ioi/../../etc", "..", "notes.txt", "no_such_task", "/etc/passwd"])
def test_task_argument_outside_params_or_not_yaml_is_refused(task: str) -> None:
    with pytest.raises(TaskError) as err:
        resolve_task_path(task)
    assert "TASK" in str(err.value) and "Fix:" in str(err.value)


def test_task_argument_accepts_a_name_or_a_yaml_path(tmp_path: Path) -> None:
    assert resolve_task_path("ioi").name == "ioi.yaml"
    path = write_task(tmp_path, VALID)
    assert resolve_task_path(str(path)) == path.resolve()


def test_overrides_are_validated_again() -> None:
    spec = load_task("ioi")
    assert spec.with_overrides(model="/models/mine", n_prompts=5, seed=3).model == "/models/mine"
    with pytest.raises(TaskError, match="n_prompts"):
        spec.with_overrides(n_prompts=-1)


# --- generation --------------------------------------------------------------------------------------


def test_generation_is_deterministic_for_a_seed() -> None:
    spec = parse_task(VALID, source="mini.yaml")
    first = [t for _, t in zip(range(20), generate_prompt_texts(spec))]
    again = [t for _, t in zip(range(20), generate_prompt_texts(spec))]
    other = [t for _, t in zip(range(20), generate_prompt_texts(spec.with_overrides(seed=2)))]
    assert first == again
    assert first != other


def test_swap_corrupts_both_names_and_answers_follow_the_clean_prompt() -> None:
    spec = parse_task(VALID, source="mini.yaml")
    for text in [t for _, t in zip(range(10), generate_prompt_texts(spec))]:
        io, s = dict(text.words)["IO"], dict(text.words)["S"]
        assert io != s
        assert text.clean == f"When {io} and {s} went to the {dict(text.words)['PLACE']}, {s} gave a ring to"
        assert text.corrupted == f"When {s} and {io} went to the {dict(text.words)['PLACE']}, {io} gave a ring to"
        assert (text.correct, text.incorrect) == (f" {io}", f" {s}")


def test_replace_draws_a_third_distinct_word() -> None:
    spec = parse_task(with_changes(corrupted={"replace": {"S": "C"}}, placeholders={"IO": "NAME", "S": "NAME", "C": "NAME"}),
                      source="mini.yaml")
    for text in [t for _, t in zip(range(10), generate_prompt_texts(spec))]:
        words = dict(text.words)
        assert len({words["IO"], words["S"], words["C"]}) == 3
        assert f", {words['C']} gave" in text.corrupted and words["S"] not in text.corrupted


# --- stage 2: with GPT-2's real tokenizer -------------------------------------------------------------


def test_prompt_set_tokens_answers_and_positions(gpt2_tokenizer: Any) -> None:
    spec = parse_task(VALID, source="mini.yaml")
    prompts = build_prompts(spec, gpt2_tokenizer)
    assert isinstance(prompts, PromptSet) and len(prompts) == 6
    assert (prompts.clean_tokens[:, 0] == gpt2_tokenizer.bos_token_id).all()
    for i in range(len(prompts)):
        end = int(prompts.final_pos[i])
        assert gpt2_tokenizer.decode(prompts.clean_tokens[i, 1 : end + 1].tolist()) == prompts.clean_prompts[i]
        assert prompts.answer_tokens[i].tolist() == [
            gpt2_tokenizer.encode(prompts.correct_answers[i])[0], gpt2_tokenizer.encode(prompts.incorrect_answers[i])[0]]
        # the answer token carries its leading space: it is the token for " Mary", not "Mary"
        assert gpt2_tokenizer.decode([int(prompts.answer_tokens[i, 0])]).startswith(" ")
    assert build_prompts(spec, gpt2_tokenizer).clean_prompts == prompts.clean_prompts


def test_multi_token_answer_word_is_named(gpt2_tokenizer: Any) -> None:
    spec = parse_task(with_changes(words={"NAME": ["Mary", "John", "Xanthippe"], "PLACE": ["store"]}), source="mini.yaml")
    with pytest.raises(TaskError) as err:
        build_prompts(spec, gpt2_tokenizer)
    assert_task_error(err, "words.NAME", "'Xanthippe'", "remove 'Xanthippe' from words.NAME")


def test_multi_token_candidate_answer_is_named(gpt2_tokenizer: Any) -> None:
    data = load_task("greater_than").to_dict()
    data["words"]["YEAR"] = data["words"]["YEAR"] + ["Xanthippe"]  # several GPT-2 tokens
    with pytest.raises(TaskError) as err:
        build_prompts(parse_task(data, source="years.yaml"), gpt2_tokenizer)
    assert_task_error(err, "words.YEAR", "'Xanthippe'", "remove 'Xanthippe' from words.YEAR")


def test_explicit_prompt_of_unequal_length_is_named(gpt2_tokenizer: Any) -> None:
    data = {"name": "demo", "description": "d", "model": "gpt2",
            "prompts": [{"clean": "When John and Mary went to the shops, John gave the bag to",
                         "corrupted": "When John and Mary went to the shops, Bartholomew gave the bag to",
                         "correct": " Mary", "incorrect": " John"}]}
    with pytest.raises(TaskError) as err:
        build_prompts(parse_task(data, source="demo.yaml"), gpt2_tokenizer)
    assert_task_error(err, "prompts[0].corrupted", "Bartholomew", "same number of tokens")


def test_too_few_prompts_that_line_up(gpt2_tokenizer: Any) -> None:
    # Replacing a one-token name with a multi-token one changes the length: no prompt lines up.
    spec = parse_task(with_changes(corrupted={"replace": {"S": "C"}}, placeholders={"IO": "NAME", "S": "NAME"},
                                   words={"NAME": ["Mary", "John"], "C": ["Xanthippe"], "PLACE": ["store"]}),
                      source="mini.yaml")
    with pytest.raises(TaskError) as err:
        build_prompts(spec, gpt2_tokenizer)
    assert_task_error(err, "n_prompts", "6", "lower n_prompts")
    assert "differ in token length" in str(err.value)


def test_the_readme_task_examples_are_valid(gpt2_tokenizer: Any) -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme[readme.index("## Task files") : readme.index("### Adding a task")]
    blocks = [yaml.safe_load(block.split("```")[0]) for block in section.split("```yaml\n")[1:]]
    tasks, fragments = [b for b in blocks if "name" in b], [b for b in blocks if "name" not in b]
    assert len(tasks) == 2
    for block in tasks:
        spec = parse_task(block, source="README.md")
        assert len(build_prompts(spec.with_overrides(n_prompts=2), gpt2_tokenizer)) == 2
    assert fragments == [{"metric": load_task("greater_than").to_dict()["metric"]}]  # the answer-set example


def test_word_positions_find_each_placeholder_word_in_the_tokens(gpt2_tokenizer: Any) -> None:
    spec = load_task("ioi")
    prompts = build_prompts(spec, gpt2_tokenizer)
    for i, words in enumerate(prompts.word_positions):
        template = spec.templates[prompts.template_index[i]]
        assert [w.role for w in words] == re.findall(r"\[(\w+)\]", template)  # every occurrence, in order
        for w in words:
            assert w.token == int(prompts.clean_tokens[i, w.position])
        io, s = (next(w.token for w in words if w.role == role) for role in ("IO", "S"))
        assert prompts.answer_tokens[i].tolist() == [io, s]  # " [IO]" and " [S]": the same tokens as in the prompt
    assert prompts.select([3, 1]).word_positions == (prompts.word_positions[3], prompts.word_positions[1])


def test_word_positions_at_the_start_and_of_several_tokens(gpt2_tokenizer: Any) -> None:
    spec = parse_task({"name": "t", "description": "d", "model": "gpt2", "n_prompts": 1,
                       "templates": ["[C] met [A] and [B], then [B] thanked"], "corrupted": {"swap": ["A", "B"]},
                       "correct": " [A]", "incorrect": " [B]",
                       "words": {"A": ["John"], "B": ["Mary"], "C": ["Bartholomew"]}},
                      source="t.yaml")
    prompts = build_prompts(spec, gpt2_tokenizer)
    tokens = prompts.clean_str_tokens[0]
    roles = [(w.role, tokens[w.position]) for w in prompts.word_positions[0]]
    # "Bartholomew" at the start has no leading space and is several tokens: its first token stands for it
    assert len(gpt2_tokenizer.encode("Bartholomew")) > 1
    assert roles == [("C", gpt2_tokenizer.decode(gpt2_tokenizer.encode("Bartholomew")[:1])), ("A", " John"),
                     ("B", " Mary"), ("B", " Mary")]


def test_word_positions_of_explicit_prompts_are_the_answer_tokens_in_them(gpt2_tokenizer: Any) -> None:
    spec = parse_task({"name": "t", "description": "d", "model": "gpt2", "prompts": [
        {"clean": "When John and Mary went to the shops, John gave the bag to",
         "corrupted": "When John and Mary went to the shops, Mary gave the bag to", "correct": " Mary",
         "incorrect": " John"}]}, source="t.yaml")
    prompts = build_prompts(spec, gpt2_tokenizer)
    tokens = prompts.clean_str_tokens[0]
    assert [(w.role, w.position, tokens[w.position]) for w in prompts.word_positions[0]] == [
        ("incorrect", 2, " John"), ("correct", 4, " Mary"), ("incorrect", 10, " John")]


SEQUENCE: dict[str, Any] = {
    "name": "seq", "description": "d", "model": "gpt2",
    "templates": [" [M] [M+1] [M+2]"], "corrupted": {"templates": [" [M] [M+1] [M+1]"]},
    "correct": " [M+3]", "incorrect": " [M+2]",
    "words": {"M": ["January", "February", "March", "April", "May"]}, "n_prompts": 2,
}


def test_offset_placeholders_take_the_next_words_of_the_list() -> None:
    texts = [next(generate_prompt_texts(parse_task({**SEQUENCE, "seed": seed}, source="t"))) for seed in range(20)]
    months = SEQUENCE["words"]["M"]
    for text in texts:
        start = months.index(dict(text.words)["M"])
        assert start + 3 < len(months), "a start whose [M+3] is past the list's end was drawn"
        assert text.clean == " " + " ".join(months[start : start + 3])
        assert text.corrupted == " " + " ".join(months[start : start + 2] + [months[start + 1]])
        assert (text.correct, text.incorrect) == (" " + months[start + 3], " " + months[start + 2])
    assert {dict(t.words)["M"] for t in texts} == {"January", "February"}


def test_a_cyclic_list_wraps_around() -> None:
    spec = parse_task({**SEQUENCE, "cyclic": ["M"], "n_prompts": 5}, source="t")
    texts = {t.clean: t for t in itertools.islice(generate_prompt_texts(spec), 200)}
    assert len(texts) == 5  # every month can start now
    assert texts[" April May January"].correct == " February"


def test_multi_token_words_are_named_with_where_they_are_used(gpt2_tokenizer: Any) -> None:
    spec = parse_task(with_changes(words={"NAME": ["Mary", "John", "Zbigniew"], "PLACE": ["store"]}), source="t")
    problems = multi_token_words(spec, gpt2_tokenizer)
    assert problems and all("'Zbigniew'" in p and "words.NAME" in p for p in problems)
    assert any("as [IO] in templates[0]" in p for p in problems) and any("in corrupted[0]" in p for p in problems)
    assert "[' Z', 'b', 'ign', 'iew']" in problems[0]
    # one token, but merged with the text before it: " 1700" is a single token, so "00" is not one of its own
    merged = parse_task({"name": "years", "description": "d", "model": "gpt2", "answer_space": False,
                         "templates": ["The war lasted from the year 17[YY] to the year 17"],
                         "corrupted": {"templates": ["The war lasted from the year 1701 to the year 17"]},
                         "correct": "99", "incorrect": "01", "words": {"YY": ["00", "32"]}}, source="t")
    assert multi_token_words(merged, gpt2_tokenizer) == [
        "words.YY: '00' is not one token of its own as [YY] in templates[0], it is tokenized as [' 1700']"]
