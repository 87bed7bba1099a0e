"""Whole-word masking on every tokenizer kind: words as the tokenizer itself splits them.

WordPiece marks the pieces that continue a word ("##ing"), byte-level BPE and SentencePiece the pieces
that start one ("Ġ", "▁"). Whole-word masking reads neither: its word boundaries are the fast
tokenizer's word ids, so each check here compares a mask with `word_ids()` of the same text.
"""

from collections import defaultdict

import pytest
import torch
from transformers import PythonBackend

from mlm_helpers.config import ConfigError
from mlm_helpers.data.examples import encode_ids, make_examples, split_word_marks, word_starts
from mlm_helpers.data.masking import (
    IGNORE_INDEX,
    MaskedLanguageModelingDataset,
    MaskingRule,
    Vocabulary,
    mask_text,
)
from mlm_helpers.data.sources import TextSource, open_stream, split_stream
from mlm_helpers.data.stream import ExampleStream
from mlm_helpers.training.prepare import eval_batches, training_batches

from .conftest import sample_lines
from .families import FAMILIES, family_tokenizer
from .test_training import small_config

LINES = sample_lines(150)
LENGTH = 32  # packed blocks of [CLS] + 30 pieces + [SEP]: many words are cut by a block's edge


@pytest.fixture(scope="module")
def lines_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("words") / "lines.txt"
    path.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    return path


def original_ids(example: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.where(example["labels"] != IGNORE_INDEX, example["labels"], example["input_ids"])


def masked_words(family: str, lines_file, whole_word: bool) -> list[list[bool]]:
    """One pass of the training stream (packed, in file order), masked: for each word of each block,
    whether each of its pieces was selected. Words are the tokenizer's own `word_ids()` of each line; a
    word cut by a block's edge is two words, one in each block."""
    tokenizer = family_tokenizer(family)
    pieces = []  # (id, (line, word)) of the running text, as packing joins the lines
    for number, line in enumerate(LINES):
        encoding = tokenizer(line, add_special_tokens=False)
        pieces += [(i, (number, word)) for i, word in zip(encoding["input_ids"], encoding.word_ids())]
    body = LENGTH - 2
    rows = split_stream(open_stream(TextSource("unused", data_files=(str(lines_file),))), 0)[1]
    stream = ExampleStream(rows, "text", tokenizer, LENGTH, "packed", shuffle_buffer=1, word_marks=whole_word)
    rule = MaskingRule(0.3, whole_word=whole_word)
    dataset = iter(MaskedLanguageModelingDataset(stream, tokenizer, rule=rule, seed=0))
    words = defaultdict(list)
    for block in range(len(pieces) // body):
        example = next(dataset)
        ids, words_here = zip(*pieces[block * body : (block + 1) * body])
        # the ids are the tokenizer's own, marks read and gone: the stream cut the text as expected
        assert original_ids(example)[1:-1].tolist() == list(ids)
        selected = (example["labels"] != IGNORE_INDEX)[1:-1].tolist()
        for word, chosen in zip(words_here, selected):
            words[block, word].append(chosen)
    return list(words.values())


@pytest.mark.parametrize("family", FAMILIES)
def test_whole_word_masking_selects_every_piece_of_a_word_or_none(family, lines_file):
    words = masked_words(family, lines_file, whole_word=True)
    assert all(all(word) or not any(word) for word in words)
    long_words = [word for word in words if len(word) > 1]
    assert sum(all(word) for word in long_words) > 10  # words of several pieces are selected, whole
    assert 0.2 < sum(map(any, words)) / len(words) < 0.4  # one draw per word, at mlm_probability


@pytest.mark.parametrize("family", FAMILIES)
def test_whole_word_masking_groups_where_token_masking_does_not(family, lines_file):
    # Token masking selects part of a word; whole-word masking never does. Were word boundaries read
    # from "##" marks, a BPE or SentencePiece vocabulary would give token masking under the name.
    by_token = masked_words(family, lines_file, whole_word=False)
    assert sum(any(word) and not all(word) for word in by_token) > 10
    by_word = masked_words(family, lines_file, whole_word=True)
    assert not any(any(word) and not all(word) for word in by_word)


@pytest.mark.parametrize("family", FAMILIES)
def test_mask_text_masks_whole_words_of_any_tokenizer(family):
    tokenizer = family_tokenizer(family)
    text = " ".join(LINES[:12])
    word_ids = tokenizer(text, truncation=True).word_ids()
    ids, labels = mask_text(text, tokenizer, mlm_probability=0.4, seed=5, whole_word_masking=True)
    selected = (labels != IGNORE_INDEX).tolist()
    words = defaultdict(list)
    for word, chosen in zip(word_ids, selected, strict=True):
        words[word].append(chosen)
    assert not any(words.pop(None))  # the special tokens
    assert all(all(word) or not any(word) for word in words.values())
    assert any(all(word) for word in words.values() if len(word) > 1)
    again = mask_text(text, tokenizer, mlm_probability=0.4, seed=5, whole_word_masking=True)
    assert torch.equal(again[0], ids) and torch.equal(again[1], labels)


class WhitespaceTokenizer(PythonBackend):
    """A slow tokenizer (transformers' Python backend): it splits on spaces and keeps no word ids."""

    def __init__(self, words: list[str]) -> None:
        self.vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words])}
        super().__init__(pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
                         mask_token="[MASK]", special_tokens_pattern="cls_sep")  # fmt: skip

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def get_vocab(self) -> dict[str, int]:
        return dict(self.vocab)

    def _tokenize(self, text: str) -> list[str]:
        return text.split()

    def _convert_token_to_id(self, token: str) -> int:
        return self.vocab.get(token, self.vocab["[UNK]"])

    def _convert_id_to_token(self, index: int) -> str:
        return list(self.vocab)[index]


def test_a_slow_tokenizer_is_refused_for_whole_word_masking_before_training(tmp_path, text_file):
    slow = WhitespaceTokenizer(sorted({word for line in sample_lines(600) for word in line.split()}))
    assert not slow.is_fast and not hasattr(slow, "backend_tokenizer")
    ids, _ = mask_text("the dog sat", slow, seed=0)  # token masking needs no word boundaries
    assert ids[0] == slow.cls_token_id
    with pytest.raises(ValueError, match="slow tokenizer .* fast tokenizer .*tokenizer.json"):
        mask_text("the dog sat", slow, seed=0, whole_word_masking=True)
    cfg = small_config(tmp_path, text_file, whole_word_masking=True)
    rows = split_stream(open_stream(TextSource.from_config(cfg)), cfg.eval_size)[1]
    with pytest.raises(ConfigError, match="WhitespaceTokenizer is a slow tokenizer"):
        training_batches(rows, slow, Vocabulary.from_tokenizer(slow), cfg)
    with pytest.raises(ConfigError, match="fast tokenizer"):
        next(make_examples(["the dog sat"], slow, 16, "sentence", word_marks=True))


def test_the_batches_of_a_whole_word_run_hold_plain_ids(tmp_path, text_file):
    # Word marks stay inside the data pipeline: training and held-out batches, which the loop, the
    # distributed probe and the notebook read, hold the tokenizer's ids, as a token-masking run has them.
    tokenizer = family_tokenizer("roberta")
    vocab = Vocabulary.from_tokenizer(tokenizer)
    batches = {}
    for whole_word in (False, True):
        cfg = small_config(tmp_path, text_file, whole_word_masking=whole_word)
        held_out, rows = split_stream(open_stream(TextSource.from_config(cfg)), cfg.eval_size)
        training = training_batches(rows, tokenizer, vocab, cfg)
        held_out_batches = eval_batches(held_out, tokenizer, cfg, vocab)
        batches[whole_word] = [next(training) for _ in range(3)] + held_out_batches
    for plain, whole in zip(batches[False], batches[True], strict=True):
        assert (whole["input_ids"] >= 0).all() and torch.equal(original_ids(whole), original_ids(plain))
        assert not torch.equal(whole["labels"], plain["labels"])


def test_word_marks_do_not_depend_on_an_earlier_truncating_call():
    tokenizer = family_tokenizer("roberta")
    long_text = " ".join(LINES[:40])  # far longer than the tokenizer's 128 positions
    tokenizer.backend_tokenizer.no_truncation()
    marked = encode_ids([long_text, LINES[0]], tokenizer, word_marks=True)
    tokenizer(long_text, truncation=True)  # leaves truncation switched on in the backend
    assert tokenizer.backend_tokenizer.truncation is not None
    assert encode_ids([long_text, LINES[0]], tokenizer, word_marks=True) == marked
    ids, starts = split_word_marks(marked[0])
    assert ids == tokenizer(long_text, add_special_tokens=False)["input_ids"] and len(ids) > 128
    assert starts == word_starts(tokenizer(long_text, add_special_tokens=False).word_ids())
