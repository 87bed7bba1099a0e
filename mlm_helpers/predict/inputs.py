"""Texts with a mask token, made ready for a masked-LM: checked, tokenized, windowed; targets.

Pure functions of a tokenizer and token ids, with no model in sight, so each rule gets a direct test.
Every input a user can get wrong is checked here and reported as `PredictionError` (or `TypeError` for
a text that is not a string), naming the text's index when it came in a batch. A text may write its
masks as the tokenizer's own mask token ("<mask>" for RoBERTa) or as BERT's "[MASK]", for any model.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Sequence
from dataclasses import dataclass

BERT_MASK = "[MASK]"  # accepted in every text, whatever the model's mask token is


class PredictionError(ValueError):
    """An input the prediction helpers cannot answer; the message says what to change."""


@dataclass(frozen=True)
class MaskedText:
    """One text as token ids, without the special tokens the tokenizer adds around it."""

    text: str
    ids: tuple[int, ...]
    masks: tuple[int, ...]  # positions of the mask tokens in `ids`
    spacing: tuple[tuple[bool, bool], ...]  # per mask: is there whitespace before it, after it
    respelled: tuple[tuple[int, tuple[int, ...]], ...]  # (position, ids to write there instead)


def as_text_list(texts: object, mask: str = BERT_MASK) -> tuple[list[str], bool]:
    """The texts as a list, and whether a single string was given (so one result, not a list, is due)."""
    if isinstance(texts, str):
        return [texts], True
    if not isinstance(texts, (list, tuple)):
        raise TypeError(f"Expected the text as a string or a list of strings, got {type(texts).__name__}.")
    if not texts:
        raise PredictionError(f"No texts given: pass a string, or a list of strings, with {mask} in them.")
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"Text {index} of the batch is a {type(text).__name__}, not a string.")
    return list(texts), False


def check_count(value: object, name: str, high: int) -> int:
    """`value` as an int from 1 to `high`, or a PredictionError that says so."""
    try:
        number = None if isinstance(value, bool) else operator.index(value)
    except TypeError:
        number = None
    if number is None or not 1 <= number <= high:
        raise PredictionError(f"{name} must be an integer from 1 to {high}, got {value!r}.")
    return number


def with_mask_token(text: str, mask: str) -> str:
    """`text` with BERT's "[MASK]" written as the tokenizer's mask token, where that is another one."""
    return text if mask == BERT_MASK else text.replace(BERT_MASK, mask)


def encode_texts(
    texts: Sequence[str], tokenizer, window: int, batch: bool, start_mark: str | None = None
) -> list[MaskedText]:
    """Tokenize `texts` in one call and check that each has a mask the model can read with the others.

    "[MASK]" stands for the tokenizer's mask token. `window` is how many tokens of a text the model reads
    at once (see `centred_window`); `start_mark` is the mark of word-start pieces ("Ġ", "▁") for a
    vocabulary whose pieces carry one, which `respell` needs.
    """
    mask = tokenizer.mask_token
    written = [with_mask_token(text, mask) for text in texts]
    # verbose=False: a text longer than the model is no mistake here, it is windowed
    encodings = tokenizer(written, add_special_tokens=False, verbose=False)["input_ids"]
    encoded = []
    for index, (text, aliased, ids) in enumerate(zip(texts, written, encodings)):
        where = f"Text {index} of the batch: " if batch else ""
        if not text.strip():
            raise PredictionError(f"{where}the text is empty: give a sentence with a {mask} in it.")
        masks = tuple(i for i, token in enumerate(ids) if token == tokenizer.mask_token_id)
        if not masks:
            also = f" (or {BERT_MASK})" if mask != BERT_MASK else ""
            raise PredictionError(
                f"{where}the text has no {mask} token: write {mask}{also}, exactly so, where a word should "
                "be predicted."
            )
        centred_window(len(ids), masks, window, where, mask)
        spacing = mask_spacing(aliased, mask, len(masks))
        respelled = respell(tokenizer, ids, masks, spacing, start_mark) if start_mark else ()
        encoded.append(MaskedText(text, tuple(ids), masks, spacing, respelled))
    return encoded


def mask_spacing(text: str, mask: str, count: int) -> tuple[tuple[bool, bool], ...]:
    """Whether the text has whitespace before and after each of its `count` masks.

    Decoding cannot say: a mask token that takes the space before it (RoBERTa's lstrip) decodes glued
    to the word before. A tokenizer that makes masks of other text (none we know) gets spaces on both sides.
    """
    spans = [match.span() for match in re.finditer(re.escape(mask), text)]
    if len(spans) != count:
        return ((True, True),) * count
    return tuple((text[:start][-1:].isspace(), text[stop:][:1].isspace()) for start, stop in spans)


def respell(tokenizer, ids, masks, spacing, start_mark: str) -> tuple[tuple[int, tuple[int, ...]], ...]:
    """The word starts a tokenizer invented right after a mask, to write without their mark.

    A SentencePiece tokenizer starts the text after a special token as a new word: the "." of "[MASK]."
    becomes "▁" "." (or "▁."), which decodes as " ." (fairseq#1306). Where the text has no space after
    the mask, that piece is written as its unmarked twin, or not at all when it is the mark alone. The
    model still reads the ids the tokenizer gave; only the filled-in text changes.
    """
    found = []
    for mask, (_, space_after) in zip(masks, spacing):
        after = mask + 1
        if space_after or after >= len(ids) or after in masks:
            continue
        token = tokenizer.convert_ids_to_tokens(ids[after])
        if not token or not token.startswith(start_mark):
            continue
        rest = token[len(start_mark) :]
        twin = tokenizer.convert_tokens_to_ids(rest) if rest else None
        if not rest:
            found.append((after, ()))
        elif tokenizer.convert_ids_to_tokens(twin) == rest:
            found.append((after, (twin,)))
    return tuple(found)


def special_frame(tokenizer) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after a text ([CLS] and [SEP] for BERT, <s> and </s>)."""
    encoding = tokenizer(tokenizer.mask_token, return_special_tokens_mask=True)
    ids, special = encoding["input_ids"], encoding["special_tokens_mask"]
    first = special.index(0)
    last = len(special) - special[::-1].index(0)
    return ids[:first], ids[last:]


def centred_window(
    length: int, masks: Sequence[int], size: int, where: str = "", mask: str = BERT_MASK
) -> tuple[int, int]:
    """`(start, stop)` of at most `size` tokens out of `length`, holding every mask, centred on them.

    A text longer than the model reads is cut around its masks, never through one: masks farther apart
    than `size` raise PredictionError (which names them `mask`).

    >>> centred_window(1000, [500], 10)
    (495, 505)
    """
    if length <= size:
        return 0, length
    first, last = min(masks), max(masks)
    if last - first + 1 > size:
        raise PredictionError(
            f"{where}the {mask} tokens span {last - first + 1} tokens, more than the {size} this model "
            "reads at once: split the text so that masks predicted together are closer."
        )
    start = (first + last + 1) // 2 - size // 2
    start = max(min(start, first, length - size), last - size + 1, 0)
    return start, start + size


def target_pieces(targets: object, tokenizer, start_mark: str | None = None) -> list[tuple[int, ...]]:
    """The piece ids of each target word, in order, without repeats.

    A word is scored in the form it takes after a space in running text: "Ġun ear th ly" for a
    byte-level BPE vocabulary whose word starts carry `start_mark` "Ġ", "▁..." for SentencePiece. A
    target written as a vocabulary entry ("paris", "##ing" in WordPiece; "Ġthe", "▁the" with a start
    mark) is that entry. A word with characters the vocabulary lacks is refused.
    """
    if isinstance(targets, str):
        targets = [targets]
    if not isinstance(targets, (list, tuple)) or not targets:
        raise PredictionError("targets must be a word or a non-empty list of words.")
    vocab = tokenizer.get_vocab()
    special = set(tokenizer.all_special_ids)
    pieces: dict[tuple[int, ...], None] = {}
    for target in targets:
        if not isinstance(target, str):
            raise TypeError(f"Each target must be a string, got {type(target).__name__}.")
        if target in vocab and (start_mark is None or target.startswith(start_mark)):
            ids = [vocab[target]]
        elif start_mark is None:  # WordPiece, or a tokenizer that does not say how it marks words
            ids = tokenizer(target, add_special_tokens=False)["input_ids"]
        else:
            ids = word_start_ids(tokenizer, target.strip())
        if not ids or any(i in special for i in ids):
            raise PredictionError(
                f"The target {target!r} is not a word this model's vocabulary can write: choose another."
            )
        pieces[tuple(ids)] = None
    return list(pieces)


def word_start_ids(tokenizer, word: str) -> list[int]:
    """The ids of `word` as the tokenizer writes it after another word and a space.

    Alone at the start of a text, a byte-level BPE tokenizer writes the word without its "Ġ", as if it
    continued one. Tokenized after "a ", the pieces that start at or after the space are the word's.
    """
    if not word:
        return []
    encoding = tokenizer(f"a {word}", add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = encoding["input_ids"], encoding["offset_mapping"]
    if any(start < 1 < stop for start, stop in offsets):  # a piece across "a" and the word: no context
        return tokenizer(word, add_special_tokens=False)["input_ids"]
    return [i for i, (start, _) in zip(ids, offsets) if start >= 1]


def chain_contents(ids: Sequence[int], mask: int, pieces: Sequence[int], mask_id: int) -> list[list[int]]:
    """The inputs that score a word of several pieces at `ids[mask]` by the chain rule, left to right.

    The mask becomes one mask token per piece; input i has the first i pieces filled in, and its first
    remaining piece mask is where piece i is read.
    """
    before, after = list(ids[:mask]), list(ids[mask + 1 :])
    return [before + list(pieces[:i]) + [mask_id] * (len(pieces) - i) + after for i in range(len(pieces))]
