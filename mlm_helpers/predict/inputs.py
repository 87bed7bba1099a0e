"""Texts with [MASK], made ready for a masked-LM: checked, tokenized, windowed; targets and filters.

Pure functions of a tokenizer and token ids, with no model in sight, so each rule gets a direct test.
Every input a user can get wrong is checked here and reported as `PredictionError` (or `TypeError` for
a text that is not a string), naming the text's index when it came in a batch.
"""

from __future__ import annotations

import operator
import string
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import torch


class PredictionError(ValueError):
    """An input the prediction helpers cannot answer; the message says what to change."""


@dataclass(frozen=True)
class MaskedText:
    """One text as token ids, without the special tokens the tokenizer adds around it."""

    text: str
    ids: tuple[int, ...]
    masks: tuple[int, ...]  # positions of the [MASK] tokens in `ids`


def as_text_list(texts: object) -> tuple[list[str], bool]:
    """The texts as a list, and whether a single string was given (so one result, not a list, is due)."""
    if isinstance(texts, str):
        return [texts], True
    if not isinstance(texts, (list, tuple)):
        raise TypeError(f"Expected the text as a string or a list of strings, got {type(texts).__name__}.")
    if not texts:
        raise PredictionError("No texts given: pass a string, or a list of strings, with [MASK] in them.")
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


def encode_texts(texts: Sequence[str], tokenizer, window: int, batch: bool) -> list[MaskedText]:
    """Tokenize `texts` in one call and check that each has a [MASK] the model can read with the others.

    `window` is how many tokens of a text the model reads at once (see `centred_window`).
    """
    # verbose=False: a text longer than the model is no mistake here, it is windowed
    encodings = tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]
    encoded = []
    for index, (text, ids) in enumerate(zip(texts, encodings)):
        where = f"Text {index} of the batch: " if batch else ""
        if not text.strip():
            raise PredictionError(f"{where}the text is empty: give a sentence with a [MASK] in it.")
        masks = tuple(i for i, token in enumerate(ids) if token == tokenizer.mask_token_id)
        if not masks:
            mask = tokenizer.mask_token
            raise PredictionError(
                f"{where}the text has no {mask} token: write {mask}, exactly so, where a word should be "
                "predicted."
            )
        centred_window(len(ids), masks, window, where)
        encoded.append(MaskedText(text, tuple(ids), masks))
    return encoded


def special_frame(tokenizer) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after a text ([CLS] and [SEP] for BERT)."""
    encoding = tokenizer(tokenizer.mask_token, return_special_tokens_mask=True)
    ids, special = encoding["input_ids"], encoding["special_tokens_mask"]
    first = special.index(0)
    last = len(special) - special[::-1].index(0)
    return ids[:first], ids[last:]


def centred_window(length: int, masks: Sequence[int], size: int, where: str = "") -> tuple[int, int]:
    """`(start, stop)` of at most `size` tokens out of `length`, holding every mask, centred on them.

    A text longer than the model reads is cut around its masks, never through one: masks farther apart
    than `size` raise PredictionError.

    >>> centred_window(1000, [500], 10)
    (495, 505)
    """
    if length <= size:
        return 0, length
    first, last = min(masks), max(masks)
    if last - first + 1 > size:
        raise PredictionError(
            f"{where}the [MASK] tokens span {last - first + 1} tokens, more than the {size} this model "
            "reads at once: split the text so that masks predicted together are closer."
        )
    start = (first + last + 1) // 2 - size // 2
    start = max(min(start, first, length - size), last - size + 1, 0)
    return start, start + size


def target_pieces(targets: object, tokenizer) -> list[tuple[int, ...]]:
    """The word-piece ids of each target word, in order, without repeats.

    A target that is itself a vocabulary entry ("paris", "##ing") is that entry; any other word is
    tokenized and may give several pieces. A word with characters the vocabulary lacks is refused.
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
        ids = [vocab[target]] if target in vocab else tokenizer(target, add_special_tokens=False)["input_ids"]
        if not ids or any(i in special for i in ids):
            raise PredictionError(
                f"The target {target!r} is not a word this model's vocabulary can write: choose another."
            )
        pieces[tuple(ids)] = None
    return list(pieces)


def chain_contents(ids: Sequence[int], mask: int, pieces: Sequence[int], mask_id: int) -> list[list[int]]:
    """The inputs that score a word of several pieces at `ids[mask]` by the chain rule, left to right.

    The mask becomes one [MASK] per piece; input i has the first i pieces filled in, and its first
    remaining piece mask is where piece i is read.
    """
    before, after = list(ids[:mask]), list(ids[mask + 1 :])
    return [before + list(pieces[:i]) + [mask_id] * (len(pieces) - i) + after for i in range(len(pieces))]


def candidate_filter(
    tokens: Sequence[str | None],
    special_ids: set[int],
    vocab_size: int,
    *,
    special: bool = False,
    punctuation: bool = False,
    subwords: bool = False,
) -> torch.Tensor:
    """Which of the model's `vocab_size` ids may be offered as candidates, as a bool tensor.

    `tokens` is the tokenizer's vocabulary by id; ids it cannot write (None, or beyond it) are never
    offered. `special`, `punctuation` and `subwords` leave out special tokens, tokens made only of
    punctuation, and WordPiece continuations ("##ing").
    """
    allowed = [
        token is not None
        and not (
            (special and token_id in special_ids)
            or (subwords and token.startswith("##"))
            or (punctuation and _is_punctuation(token.removeprefix("##")))
        )
        for token_id, token in enumerate(tokens[:vocab_size])
    ]
    allowed += [False] * (vocab_size - len(allowed))
    return torch.tensor(allowed, dtype=torch.bool)


def _is_punctuation(token: str) -> bool:
    # BERT counts every ASCII non-alphanumeric character as punctuation, and Unicode's P* categories.
    return bool(token) and all(c in string.punctuation or unicodedata.category(c)[0] == "P" for c in token)
