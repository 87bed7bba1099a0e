"""Domain vocabulary (new_words.py): whole words added to every kind of tokenizer and to its model."""

import json

import pytest
import torch
from transformers import AutoModelForMaskedLM, AutoTokenizer

from mlm_helpers.config import ConfigError
from mlm_helpers.new_words import (
    MIN_PIECES,
    add_embedding_rows,
    extend_tokenizer,
    frequent_split_words,
    plan_words,
    tokens_per_word,
)
from mlm_helpers.training.checkpoints import CheckpointError, complete_checkpoints
from mlm_helpers.training.run import train

from .conftest import sample_lines
from .families import FAMILIES, family_model, family_tokenizer
from .test_resume import assert_identical, config, final_state, interrupt_at_batch

TEXT = "The unearthly quiet of the harbour was unearthly, and the gulls were unearthly too."


@pytest.mark.parametrize("family", FAMILIES)
def test_a_new_word_is_one_token_whose_rows_are_the_mean_of_its_pieces(family, tmp_path):
    tokenizer, model = family_tokenizer(family), family_model(family)
    words = plan_words(tokenizer, ["unearthly", "harbour"])
    assert words[0].entry.endswith("unearthly") and all(len(word.pieces) > 1 for word in words)
    extended = extend_tokenizer(tokenizer, words)
    add_embedding_rows(model, words)

    first = len(tokenizer)
    ids = extended(TEXT)["input_ids"]
    assert ids.count(first) == 3  # "unearthly", each time one token
    assert extended.decode(ids, skip_special_tokens=True) == tokenizer.decode(
        tokenizer(TEXT)["input_ids"], skip_special_tokens=True
    )  # the same text back, spaces and all
    inputs, output = model.get_input_embeddings().weight, model.get_output_embeddings()
    assert output.weight.data_ptr() == inputs.data_ptr()  # still tied
    bias = output.bias if getattr(output, "bias", None) is not None else None
    for index, word in enumerate(words):
        pieces = list(word.pieces)
        assert torch.allclose(inputs[first + index], inputs[pieces].mean(dim=0))
        if bias is not None:
            assert torch.isclose(bias[first + index], bias[pieces].mean())
    assert model.config.vocab_size == len(extended) == first + len(words)

    model.save_pretrained(tmp_path)
    extended.save_pretrained(tmp_path)
    reloaded, info = AutoModelForMaskedLM.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"]
    assert AutoTokenizer.from_pretrained(tmp_path)(TEXT)["input_ids"] == ids
    assert torch.equal(reloaded.get_input_embeddings().weight, inputs)


@pytest.mark.parametrize("family", ["bert", "roberta", "xlm-roberta"])
def test_only_words_that_are_or_start_with_a_new_word_tokenize_differently(family):
    # Byte-level BPE finds a new word only whole (ignore_merges), every other word still by its merges;
    # WordPiece and Unigram may also start a longer word with it ("summer" in "summers").
    tokenizer = family_tokenizer(family)
    words = frequent_split_words(sample_lines(), tokenizer, 20)
    extended = extend_tokenizer(tokenizer, words)
    entries = {word.entry for word in words}
    backend = tokenizer.backend_tokenizer
    changed = 0
    for line in sample_lines():
        before, after = tokenizer(line)["input_ids"], extended(line)["input_ids"]
        normalized = backend.normalizer.normalize_str(line) if backend.normalizer else line
        seen = {word for word, _ in backend.pre_tokenizer.pre_tokenize_str(normalized)}
        if family == "roberta":
            explained = bool(seen & entries)
        else:
            explained = any(word.startswith(entry) for word in seen for entry in entries)
        assert before == after or explained, line
        assert len(after) <= len(before)
        changed += before != after
    assert changed > 20


def test_frequent_words_are_the_most_frequent_split_ones_and_never_glued_punctuation():
    tokenizer = family_tokenizer("albert")  # SentencePiece keeps punctuation on words: 'them."'
    words = frequent_split_words(sample_lines(), tokenizer, 10)
    assert len(words) == 10 and all(len(word.pieces) >= MIN_PIECES for word in words)
    assert all(word.entry.lstrip("▁").isalpha() for word in words)
    assert words == frequent_split_words(sample_lines(), tokenizer, 10)  # the same text, the same words
    counts = [sum(line.count(word.entry.lstrip("▁")) for line in sample_lines()) for word in words]
    assert counts[0] >= counts[-1]


def test_words_already_whole_are_skipped_and_words_the_tokenizer_splits_first_are_refused():
    tokenizer = family_tokenizer("bert")
    assert plan_words(tokenizer, ["the", "and"]) == []
    with pytest.raises(ConfigError, match="'x-ray' is split into .* before this tokenizer looks up"):
        plan_words(tokenizer, ["x-ray"])


def test_tokens_per_word_fall_when_frequent_words_are_added():
    tokenizer = family_tokenizer("roberta")
    extended = extend_tokenizer(tokenizer, frequent_split_words(sample_lines(), tokenizer, 50))
    assert tokens_per_word(sample_lines(), extended) < tokens_per_word(sample_lines(), tokenizer)


@pytest.fixture(scope="module")
def word_list(tmp_path_factory):
    path = tmp_path_factory.mktemp("words") / "words.txt"
    path.write_text("unearthly\nthe\n\nunearthly\n", encoding="utf-8")  # "the" is whole already
    return path


def test_a_run_adding_words_resumes_bit_identically_and_saves_a_plain_folder(
    tmp_path, local_model, text_file_module, word_list, tokenizer, capsys
):
    words = dict(add_tokens=str(word_list), add_frequent_words=3, max_steps=8)
    whole = config(tmp_path / "whole", local_model, text_file_module, **words)
    train(whole)
    report = capsys.readouterr().out
    assert "Added 4 words to the vocabulary" in report and "unearthly (5)" in report
    assert "Tokens per word on the held-out text" in report

    cfg = config(tmp_path / "resumed", local_model, text_file_module, **words)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, loop=interrupt_at_batch(6))
    assert complete_checkpoints(tmp_path / "resumed" / "out" / "checkpoints")
    train(cfg)
    assert_identical(final_state(tmp_path / "resumed" / "out"), final_state(tmp_path / "whole" / "out"))

    saved = tmp_path / "whole" / "model"
    model = AutoModelForMaskedLM.from_pretrained(saved)
    extended = AutoTokenizer.from_pretrained(saved)
    assert model.config.vocab_size == len(extended) == len(tokenizer) + 4
    assert extended.tokenize("an unearthly harbour") == ["an", "unearthly", "harbour"]
    assert json.loads((tmp_path / "whole" / "out" / "summary.json").read_text())["steps"] == 8


def test_changing_the_word_list_before_a_resume_is_refused(tmp_path, local_model, text_file_module):
    words = tmp_path / "words.txt"
    words.write_text("harbour\n", encoding="utf-8")
    cfg = config(tmp_path, local_model, text_file_module, add_tokens=str(words), max_steps=4)
    train(cfg)
    words.write_text("unearthly\n", encoding="utf-8")
    with pytest.raises(CheckpointError, match=f"word list {words} changed"):
        train(cfg.replace(max_steps=6))
    with pytest.raises(CheckpointError, match="--add-frequent-words was 0, now 2"):
        train(cfg.replace(max_steps=6, add_tokens=str(words), add_frequent_words=2))
