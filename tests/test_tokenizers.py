"""The task rules with a tokenizer that marks word starts the SentencePiece way (``▁Mary``, as Llama's
and Gemma's do), built here with the ``tokenizers`` library: answers are found where they stand after
the prompt, word positions and equal lengths hold, errors say what the tokenizer did, and BOS is never
doubled even where the tokenizer adds one itself."""

from __future__ import annotations

from typing import Any

import pytest
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from helpers.tasks.prompts import TaskError, answer_token, build_prompts, generate_prompt_texts, load_task


@pytest.fixture(scope="module")
def sentencepiece_style() -> Any:
    """A BPE tokenizer laid out like Llama 2's: its normaliser adds a ``▁`` before the text and turns every
    space into ``▁`` (so " Mary" alone becomes "▁▁Mary"), words split before each ``▁``, and a
    post-processor prepends ``<s>``. Trained on IOI's prompts, every word of the task is one token."""
    from transformers import PreTrainedTokenizerFast

    spec = load_task("ioi")
    corpus = [text.clean + " " + text.correct for text, _ in zip(generate_prompt_texts(spec), range(2000))]
    corpus += [" ".join(words) for _, words in spec.words]
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    bpe.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    bpe.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.Strip(" ", 1, 0)])
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=2000, special_tokens=["<unk>", "<s>", "</s>"]))
    bpe.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bpe.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def test_an_answer_is_the_word_start_token_where_it_stands(sentencepiece_style: Any) -> None:
    tokenizer = sentencepiece_style
    prompt = "When Mary and John went to the store, John gave a drink to"
    # alone, " Mary" gets a dummy prefix too: two pieces, neither the token the model predicts after "to"
    assert tokenizer.convert_ids_to_tokens(tokenizer(" Mary", add_special_tokens=False)["input_ids"]) == ["▁", "▁Mary"]
    token, pieces = answer_token(tokenizer, prompt, " Mary")
    assert tokenizer.convert_ids_to_tokens([token]) == ["▁Mary"] and pieces == ["Mary"]


def test_ioi_builds_with_one_bos_equal_lengths_and_every_word_found(sentencepiece_style: Any) -> None:
    tokenizer = sentencepiece_style
    bos = tokenizer.bos_token_id
    assert tokenizer("a b")["input_ids"][0] == bos  # the tokenizer adds BOS itself...
    prompts = build_prompts(load_task("ioi").with_overrides(n_prompts=16), tokenizer, prepend_bos=True)
    assert (prompts.clean_tokens[:, 0] == bos).all() and (prompts.clean_tokens[:, 1] != bos).all()  # ...once
    assert prompts.clean_tokens.shape == prompts.corrupted_tokens.shape
    for i in range(len(prompts)):
        correct, incorrect = prompts.metric.correct_tokens(i), prompts.metric.incorrect_tokens(i)
        assert tokenizer.convert_ids_to_tokens(correct + incorrect) == ["▁" + prompts.correct_answers[i].strip(),
                                                                       "▁" + prompts.incorrect_answers[i].strip()]
        roles = [w.role for w in prompts.word_positions[i]]
        assert roles.count("S") == 2 and {"IO", "PLACE", "OBJECT"} <= set(roles)
        for word in prompts.word_positions[i]:
            assert tokenizer.convert_ids_to_tokens([word.token])[0].startswith("▁")
    without = build_prompts(load_task("ioi").with_overrides(n_prompts=4), tokenizer, prepend_bos=False)
    assert (without.clean_tokens[:, 0] != bos).all()


def test_a_multi_token_answer_says_what_the_tokenizer_made_of_it(sentencepiece_style: Any, tmp_path: Any) -> None:
    text = load_task("ioi").to_dict()
    text["words"]["NAME"] = ["Xanthippe", *text["words"]["NAME"]]
    with pytest.raises(TaskError) as err:
        build_prompts(load_task(text), sentencepiece_style)
    message = str(err.value)
    assert "'Xanthippe'" in message and "after the prompt" in message and "tokens [" in message
    assert "Fix: remove 'Xanthippe' from words.NAME" in message
