"""The tasks shipped in params/: each validates, makes its prompts with GPT-2's real tokenizer, and uses
only words that are one token where they appear."""

from __future__ import annotations

import itertools
import re
from typing import Any

import pytest
import torch

from helpers.tasks.prompts import available_tasks, build_prompts, generate_prompt_texts, load_task, multi_token_words

SHIPPED = ("ioi", "ioi_abc", "ioi_demo", "numseq", "months", "days", "letters", "number_words", "word_is_num",
           "greater_than")


def test_the_library_holds_the_tasks_the_readme_lists() -> None:
    assert set(SHIPPED) <= set(available_tasks())


@pytest.mark.parametrize("task", available_tasks())
def test_each_task_makes_its_prompts_with_gpt2s_tokenizer(task: str, gpt2_tokenizer: Any) -> None:
    spec = load_task(task)
    assert len(spec.description.split()) >= 20, "the description says what the task probes"
    assert len(spec.templates) >= 2 or spec.n_prompts >= 20 or len(spec.prompts) == 8
    prompts = build_prompts(spec, gpt2_tokenizer)
    assert len(prompts) == spec.n_prompts
    assert (prompts.clean_tokens != prompts.corrupted_tokens).any(dim=1).all(), "every corruption changes the prompt"
    if spec.templates:
        assert set(prompts.template_index) == set(range(len(spec.templates)))


@pytest.mark.parametrize("task", available_tasks())
def test_every_generated_prompt_has_equal_clean_and_corrupted_lengths(task: str, gpt2_tokenizer: Any) -> None:
    """Not just the kept ones: a task whose prompts had to be dropped for unequal lengths is flagged."""
    spec = load_task(task)
    for text in itertools.islice(generate_prompt_texts(spec), 3 * spec.n_prompts):
        clean, corrupted = (gpt2_tokenizer(t, add_special_tokens=False)["input_ids"] for t in (text.clean, text.corrupted))
        assert len(clean) == len(corrupted), (text.clean, text.corrupted)


@pytest.mark.parametrize("task", available_tasks())
def test_every_word_is_one_gpt2_token_where_it_is_used(task: str, gpt2_tokenizer: Any) -> None:
    assert multi_token_words(load_task(task), gpt2_tokenizer) == []


def test_ioi_demo_is_the_exploratory_analysis_demos_eight_prompts(gpt2_tokenizer: Any) -> None:
    prompts = build_prompts(load_task("ioi_demo"), gpt2_tokenizer)
    assert prompts.clean_prompts[0] == "When John and Mary went to the shops, John gave the bag to"
    assert prompts.clean_prompts[7] == "After Martin and Amy went to the park, Martin gave a drink to"
    for i in range(8):
        partner = i ^ 1  # prompts come in pairs
        assert prompts.corrupted_prompts[i] == prompts.clean_prompts[partner]
        assert (prompts.correct_answers[i], prompts.incorrect_answers[i]) == (
            prompts.incorrect_answers[partner], prompts.correct_answers[partner])


def test_ioi_abc_replaces_the_names_with_three_others() -> None:
    for text in itertools.islice(generate_prompt_texts(load_task("ioi_abc")), 32):
        words = dict(text.words)
        names = [words[k] for k in ("IO", "S", "A", "B", "C")]
        assert len(set(names)) == 5
        assert not {words["IO"], words["S"]} & set(re.findall(r"[A-Za-z]+", text.corrupted))
        assert all(words[k] in text.corrupted for k in ("A", "B", "C"))


@pytest.mark.parametrize(("task", "clean", "corrupted", "answers"), [
    ("numseq", " 1 2 3 4", " 1 2 3 3", (" 5", " 4")),
    ("months", " November December January February", " November December January January", (" March", " February")),
    ("days", " Saturday Sunday Monday Tuesday", " Saturday Sunday Monday Monday", (" Wednesday", " Tuesday")),
    ("letters", " A B C D", " A B C C", (" E", " D")),
    ("number_words", " one two three four", " one two three three", (" five", " four")),
])
def test_sequence_tasks_continue_and_repeat(task: str, clean: str, corrupted: str, answers: tuple[str, str]) -> None:
    texts = {t.clean: t for t in itertools.islice(generate_prompt_texts(load_task(task)), 3000)}
    assert clean in texts, f"{clean!r} is among {task}'s prompts"
    assert (texts[clean].corrupted, (texts[clean].correct, texts[clean].incorrect)) == (corrupted, answers)


def test_word_is_num_corrupts_the_fourth_number() -> None:
    text = next(generate_prompt_texts(load_task("word_is_num")))
    assert text.clean.endswith(" is 4. " + dict(text.words)["E"] + " is")
    assert text.corrupted == text.clean.replace(" is 4.", " is 3.")
    assert (text.correct, text.incorrect) == (" 5", " 4")


def test_greater_than_answer_sets_are_the_years_after_and_up_to_yy(gpt2_tokenizer: Any) -> None:
    prompts = build_prompts(load_task("greater_than"), gpt2_tokenizer)
    assert prompts.metric.kind == "prob_diff"
    for i in range(len(prompts)):
        yy = int(prompts.clean_prompts[i].split(" 17")[1][:2])
        assert prompts.corrupted_prompts[i] == prompts.clean_prompts[i].replace(f" 17{yy:02d} ", " 1701 ")
        correct = [gpt2_tokenizer.decode([t]) for t in prompts.metric.correct_tokens(i)]
        incorrect = [gpt2_tokenizer.decode([t]) for t in prompts.metric.incorrect_tokens(i)]
        assert correct == [f"{y:02d}" for y in range(yy + 1, 100)]
        assert incorrect == [f"{y:02d}" for y in range(0, yy + 1)]
    with pytest.raises(ValueError, match="sets of tokens"):
        _ = prompts.answer_tokens
    assert torch.equal(prompts.select([3, 1]).metric.tokens[0], prompts.metric.tokens[3])
