"""Texts -> token ids -> examples: packed blocks or one per row. Pure functions of a tokenizer.

Whole-word masking needs to know which pieces continue a word. The fast tokenizer's word ids say so
for every tokenizer kind, where a vocabulary's own marks differ by kind (WordPiece marks the pieces
that continue a word, byte-level BPE and SentencePiece those that start one). Rather than carry a
second list beside every id list, through the stream's pending rows, its carry, its saved state and
the packing, a piece that continues a word is stored as ``~id``, a negative int
(`mark_continuations`): all of that stays lists of ints, cut by the same code, and a saved state keeps
its shape. Ids are marked only when asked for (`word_marks=True`), and only
`MaskedLanguageModelingDataset` reads the marks (`split_word_marks`): nothing after it sees a marked id.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from itertools import islice

from ..config import ConfigError

TOKENIZE_CHUNK = 256  # rows per call of the fast tokenizer: large enough to amortise the call


def encode_ids(texts: list[str], tokenizer, word_marks: bool = False) -> list[list[int]]:
    """The token ids of each text, without special tokens, in one call; with `word_marks`, each piece
    that continues a word marked as ``~id`` (see `mark_continuations`).

    A fast tokenizer's own `encode_batch_fast` (tokenizers 0.21+, no offsets computed) gives the same ids
    as calling the transformers tokenizer, without building an Encoding object per text and converting
    it: on the 128-token training stream that wrapper took a quarter of the data pipeline's time. It
    gives no word ids, so marked ids come from `encode_batch`, which does.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    # Only while the backend neither truncates nor pads: the transformers wrapper switches both per
    # call, and an earlier call with truncation=True leaves truncation switched on in the backend.
    plain = backend is not None and backend.truncation is None and backend.padding is None
    if word_marks:
        require_word_ids(tokenizer)
        encodings = (
            backend.encode_batch(texts, add_special_tokens=False)
            if plain
            else tokenizer(texts, add_special_tokens=False, return_attention_mask=False).encodings
        )
        return [mark_continuations(encoding.ids, encoding.word_ids) for encoding in encodings]
    if plain and hasattr(backend, "encode_batch_fast"):
        return [encoding.ids for encoding in backend.encode_batch_fast(texts, add_special_tokens=False)]
    return tokenizer(texts, add_special_tokens=False, return_attention_mask=False)["input_ids"]


def require_word_ids(tokenizer) -> None:
    """Raise ConfigError unless the tokenizer says where its words start (a fast tokenizer does)."""
    if getattr(tokenizer, "backend_tokenizer", None) is None or not getattr(tokenizer, "is_fast", False):
        raise ConfigError(
            f"Whole-word masking needs to know where words start, and {type(tokenizer).__name__} is a "
            "slow tokenizer that does not say. Load the model's fast tokenizer (AutoTokenizer."
            "from_pretrained gives one when the model folder has tokenizer.json, or a tokenizer "
            "transformers can convert), or turn whole-word masking off."
        )


def word_starts(word_ids: Sequence[int | None]) -> list[bool]:
    """Whether each piece starts a word, from a fast tokenizer's word ids (None: a special token,
    which is a word of its own)."""
    return [word is None or word != before for word, before in zip(word_ids, [None, *word_ids])]


def mark_continuations(ids: Sequence[int], word_ids: Sequence[int | None]) -> list[int]:
    """The ids with each piece that continues a word stored as ``~id`` (negative); see the module's
    docstring. `split_word_marks` reads them back.

    >>> mark_continuations([7, 8, 9], [0, 0, 1])
    [7, -9, 9]
    """
    return [i if start else ~i for i, start in zip(ids, word_starts(word_ids), strict=True)]


def split_word_marks(ids: Sequence[int]) -> tuple[list[int], list[bool]]:
    """Marked ids -> (the plain ids, whether each piece starts a word): `mark_continuations` undone.

    >>> split_word_marks([7, -9, 9])
    ([7, 8, 9], [True, False, True])
    """
    return [i if i >= 0 else ~i for i in ids], [i >= 0 for i in ids]


def tokenize_texts(texts: Iterable[str], tokenizer, word_marks: bool = False) -> Iterator[list[int]]:
    """Token ids of each text, without special tokens, tokenized in chunks for speed (marked ids with
    `word_marks`, see `encode_ids`)."""
    iterator = iter(texts)
    while chunk := list(islice(iterator, TOKENIZE_CHUNK)):
        yield from encode_ids(chunk, tokenizer, word_marks)


def next_example(
    pending: list[list[int]], carry: list[int], length: int, packing: str, cls_id: int, sep_id: int
) -> list[int] | None:
    """The next example of at most `length` ids, [CLS] ... [SEP], or None when more text is needed.

    `pending` (token lists not yet used, oldest first) and `carry` (packed ids not yet in a block) are
    consumed in place. This is the one place examples are cut: the resumable training stream calls it
    with its saved state, `make_examples` with a fresh one. "packed" cuts the running text into blocks
    of exactly `length` ids: no padding, which is where packing saves its compute (BookCorpus rows
    average about 13 words; padding each to 512 would spend over 95% of the work on padding).
    "sentence" keeps one row per example and cuts rows longer than `length`.
    """
    body = length - 2
    if packing == "sentence":
        if not pending:
            return None
        ids = pending.pop(0)[:body]
    else:
        if len(carry) < body:  # all the pending ids at once: cheaper than a list at a time
            for ids in pending:
                carry.extend(ids)
            pending.clear()
        if len(carry) < body:
            return None
        ids = carry[:body]
        del carry[:body]
    return [cls_id, *ids, sep_id]


def cut_examples(
    token_lists: Iterable[list[int]],
    length: int,
    packing: str,
    cls_id: int,
    sep_id: int,
    drop_last: bool = True,
) -> Iterator[list[int]]:
    """Token lists -> examples with `next_example`; a packed tail too short for a block is dropped, or
    yielded short when `drop_last` is False.

    >>> list(cut_examples([[5, 6, 7], [8, 9]], length=4, packing="packed", cls_id=1, sep_id=2))
    [[1, 5, 6, 2], [1, 7, 8, 2]]
    """
    pending: list[list[int]] = []
    carry: list[int] = []
    for ids in token_lists:
        pending.append(ids)
        while (example := next_example(pending, carry, length, packing, cls_id, sep_id)) is not None:
            yield example
    if carry and not drop_last:
        yield [cls_id, *carry, sep_id]


def make_examples(
    texts: Iterable[str],
    tokenizer,
    length: int,
    packing: str,
    drop_last: bool = True,
    word_marks: bool = False,
) -> Iterator[list[int]]:
    """Texts -> token-id examples, packed into blocks or one per row; with `word_marks`, the pieces
    that continue a word marked for whole-word masking (see `encode_ids`)."""
    token_lists = tokenize_texts(texts, tokenizer, word_marks)
    return cut_examples(
        token_lists, length, packing, tokenizer.cls_token_id, tokenizer.sep_token_id, drop_last
    )
