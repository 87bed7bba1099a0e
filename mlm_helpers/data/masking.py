"""The BERT corruption rule as a pure function, and the dataset that applies it to a stream.

Masks are a function of (seed, example position) alone: every draw is a hash of the seed's key, the
example's position and the draw's number (a counter-based generator, see draws.py), never the next
number of a generator that carries state. A run is therefore reproducible bit for bit, a resumed run
can rebuild the masks of any example, no mask depends on how many batches this process happened to
see before it, and a whole batch is masked in a few array operations with the masks each of its
examples would get alone.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import IterableDataset

from .draws import key_of, streams, uniforms
from .examples import require_word_ids, word_starts

IGNORE_INDEX = -100  # the label value that PyTorch's cross-entropy skips


@dataclass(frozen=True)
class MaskingRule:
    """Which tokens are selected, and what a selected token becomes (the BERT paper's 15% / 80-10-10)."""

    mlm_probability: float = 0.15
    mask_replace_prob: float = 0.8
    random_replace_prob: float = 0.1
    whole_word: bool = False

    def __post_init__(self) -> None:
        if not 0.0 < self.mlm_probability < 1.0:
            raise ValueError(f"mlm_probability must be between 0 and 1, got {self.mlm_probability}.")
        shares = (self.mask_replace_prob, self.random_replace_prob)
        if min(shares) < 0.0 or sum(shares) > 1.0 + 1e-9:
            raise ValueError(
                f"mask_replace_prob ({shares[0]}) and random_replace_prob ({shares[1]}) are shares of the "
                "selected tokens: each at least 0, together at most 1."
            )


@dataclass(frozen=True)
class Vocabulary:
    """What the masking rule needs to know about a tokenizer's vocabulary, as lookup tables by id."""

    mask_token_id: int
    pad_token_id: int
    special: torch.Tensor  # bool[vocab]: never selected, never drawn as a random replacement
    random_ids: torch.Tensor  # long[n]: the ids a random replacement may draw

    @classmethod
    def from_tokenizer(cls, tokenizer) -> Vocabulary:
        """Build the tables from a Hugging Face tokenizer with a [MASK] token."""
        if tokenizer.mask_token_id is None:
            raise ValueError("This tokenizer has no mask token: masked-LM training needs one.")
        size = len(tokenizer)
        special = torch.zeros(size, dtype=torch.bool)
        special[list(tokenizer.all_special_ids)] = True
        tokens = tokenizer.convert_ids_to_tokens(list(range(size)))
        # Unused slots such as "[unused12]" in bert-base's vocabulary are no words either.
        unused = torch.tensor([t.startswith("[unused") for t in tokens], dtype=torch.bool)
        random_ids = torch.nonzero(~special & ~unused).flatten()
        return cls(tokenizer.mask_token_id, tokenizer.pad_token_id, special, random_ids)


def example_generator(seed: int, position: int) -> torch.Generator:
    """A torch generator that depends on (seed, position) only, for `mask_tokens`. Hashing keeps seeds of
    nearby runs apart."""
    digest = hashlib.blake2b(f"{seed}:{position}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))


# Each token has three draws of its own (see draws.py): counter 3t (3w under a whole-word rule, w the
# token's word, so that all of a word's pieces share it) selects, 3t + 1 says what a selected token
# becomes, 3t + 2 picks its random replacement. Counters past a row's end are never used, so a row's
# masks do not depend on the padding after it, nor on the other rows of its batch.
SELECT, ACTION, PICK = 0, 1, 2
DRAWS_PER_TOKEN = 3


def mask_array(
    ids: np.ndarray,
    examples: np.ndarray,
    key: int,
    vocab: Vocabulary,
    rule: MaskingRule,
    word_starts: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The masking rule on an int64 array of token ids [rows, length]: row r is example `examples[r]`
    under `key`, and its masks depend on its ids, that example number and the key alone.

    Returns ``(masked_ids, labels)``; see `mask_tokens`. The draws are counter-based (draws.py): a
    batch of rows is masked in a few array operations, with the masks each row would get alone.
    """
    special = vocab.special.numpy()[ids]
    if rule.whole_word:
        if word_starts is None or word_starts.shape != ids.shape:
            raise ValueError(
                "Whole-word masking needs word_starts: a bool tensor of the ids' shape, True where a "
                "piece starts a word (make_examples(..., word_marks=True) gives examples that carry them)."
            )
        # One draw per word, shared by all of its pieces: a word is selected whole or not at all. A
        # special token is a word of its own, and so is the first piece and the piece after a special
        # token: a block that begins inside a word ([CLS] ing ...) gives "ing" its own draw.
        boundary = np.ones_like(special)  # the first piece, and each piece after a special token
        boundary[:, 1:] = special[:, :-1]
        unit = np.cumsum(word_starts | special | boundary, axis=1) - 1
    else:
        unit = np.arange(ids.shape[1])
    starts = streams(key, examples)[:, None]
    selected = (uniforms(starts, unit * DRAWS_PER_TOKEN + SELECT) < rule.mlm_probability) & ~special
    rows, cols = np.nonzero(selected)  # the other draws are made for the selected tokens only
    action = uniforms(starts[rows, 0], cols * DRAWS_PER_TOKEN + ACTION)
    to_mask = action < rule.mask_replace_prob
    to_random = ~to_mask & (action < rule.mask_replace_prob + rule.random_replace_prob)

    masked = ids.copy()
    masked[rows[to_mask], cols[to_mask]] = vocab.mask_token_id
    rows, cols = rows[to_random], cols[to_random]
    random_ids = vocab.random_ids.numpy()
    pick = uniforms(starts[rows, 0], cols * DRAWS_PER_TOKEN + PICK) * len(random_ids)
    masked[rows, cols] = random_ids[pick.astype(np.int64)]
    labels = np.where(selected, ids, IGNORE_INDEX)
    return masked, labels


def mask_tokens(
    input_ids: torch.Tensor,
    vocab: Vocabulary,
    rule: MaskingRule,
    generator: torch.Generator,
    word_starts: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply the masking rule to a 1-D (or batched 2-D) tensor of token ids, with draws from `generator`.

    Returns ``(masked_ids, labels)``: labels hold the original id where a token was selected and
    IGNORE_INDEX everywhere else. Special and padding tokens are never selected, and a random
    replacement never draws a special token. A whole-word rule needs `word_starts`, a bool tensor of
    the ids' shape: True where a piece starts a word (from the tokenizer's word ids).

    >>> masked, labels = mask_tokens(ids, vocab, MaskingRule(), example_generator(0, 0))
    """
    ids = input_ids.long()
    high, low = torch.randint(2**32, (2,), generator=generator).tolist()
    rows = ids.reshape(-1, ids.shape[-1]).numpy()
    starts = None if word_starts is None else word_starts.bool().numpy()
    if starts is not None and starts.shape == ids.shape:  # another shape is refused by mask_array
        starts = starts.reshape(rows.shape)
    masked, labels = mask_array(rows, np.arange(len(rows)), high << 32 | low, vocab, rule, starts)
    return torch.from_numpy(masked).reshape(ids.shape), torch.from_numpy(labels).reshape(ids.shape)


class MaskedLanguageModelingDataset(IterableDataset):
    """A torch dataset over a stream of token-id examples that masks each example as it is read.

    ``examples`` is any re-iterable of token-id sequences (e.g. an `ExampleStream`, or a list). Example
    number ``position`` (counted from ``start``) is masked with the draws of that position under the
    seed's key (see `mask_array`), so the same seed gives the same masks, and an example read again at a
    later position (the next pass over a small corpus) gets fresh ones. When a run's examples come from
    ``world_size`` streams (one per process, or per DataLoader worker of each process), stream ``rank``
    masks its example ``position`` as example ``position * world_size + rank`` of the whole run: streams
    never share masks, and one step's batches of several processes are masked together as one process
    would mask them. Iterating gives one example at a time; `batches` gives the same masks a batch at a
    time, as training reads them.

    A whole-word rule reads where words start from marks in the ids (``~id`` for a piece that continues
    a word): give it examples from `make_examples` or `ExampleStream` with ``word_marks=True``. In ids
    without marks every piece counts as a word. The masked examples hold plain ids.

    >>> ds = MaskedLanguageModelingDataset([[101, 7592, 2088, 102]], tokenizer, mlm_probability=0.15)
    >>> next(iter(ds))["labels"]
    """

    def __init__(
        self,
        examples: Iterable[Sequence[int]],
        tokenizer=None,
        mlm_probability: float = 0.15,
        *,
        rule: MaskingRule | None = None,
        vocab: Vocabulary | None = None,
        seed: int = 0,
        start: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if vocab is None:
            if tokenizer is None:
                raise ValueError("Pass a tokenizer (or a Vocabulary) so the dataset knows its [MASK] id.")
            vocab = Vocabulary.from_tokenizer(tokenizer)
        self.examples = examples
        self.vocab = vocab
        self.rule = rule or MaskingRule(mlm_probability=mlm_probability)
        self.seed, self.key = seed, key_of(seed)
        self.start = start
        self.rank, self.world_size = rank, world_size

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for position, ids in enumerate(self.examples, start=self.start):
            yield self.mask_example(ids, position)

    def batches(self, batch_size: int, pad_token_id: int | None = None) -> Iterator[dict[str, torch.Tensor]]:
        """The masked examples from ``start`` on, `batch_size` at a time, as batches (see `mask_batch`);
        the last one may be smaller. Each example's masks are those iterating gives it."""
        examples, position = iter(self.examples), self.start
        while chunk := list(islice(examples, batch_size)):
            yield self.mask_batch(chunk, position, pad_token_id)
            position += len(chunk)

    def mask_example(self, ids: Sequence[int], position: int) -> dict[str, torch.Tensor]:
        """The masked form of one example; depends only on its ids, the seed and its position."""
        batch = self.mask_batch([ids], position)
        return {"input_ids": batch["input_ids"][0], "labels": batch["labels"][0]}

    def mask_batch(
        self, examples: Sequence[Sequence[int]], position: int, pad_token_id: int | None = None
    ) -> dict[str, torch.Tensor]:
        """Examples number `position`, `position` + 1, ... masked, in one batch padded to the longest
        (with the vocabulary's pad id unless given): input_ids, attention_mask and labels."""
        lengths = [len(ids) for ids in examples]
        width = max(lengths)
        if min(lengths) < width:
            pad = self.vocab.pad_token_id if pad_token_id is None else pad_token_id
            examples = [[*ids, *[pad] * (width - len(ids))] for ids in examples]
        ids = np.array(examples, dtype=np.int64).reshape(len(lengths), width)
        starts = None
        if self.rule.whole_word:  # the ids carry word marks: read and drop them (see data.examples)
            starts = ids >= 0
            ids = np.where(starts, ids, ~ids)
        numbers = (position + np.arange(len(lengths))) * self.world_size + self.rank
        masked, labels = mask_array(ids, numbers, self.key, self.vocab, self.rule, starts)
        attention = np.arange(width) < np.array(lengths)[:, None]
        return {
            "input_ids": torch.from_numpy(masked),
            "attention_mask": torch.from_numpy(attention.astype(np.int64)),
            "labels": torch.from_numpy(labels),
        }


def collate(examples: list[dict[str, torch.Tensor]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Stack examples into a batch, padding to the longest one (packed blocks need no padding)."""
    ids = [e["input_ids"] for e in examples]
    lengths = torch.tensor([len(i) for i in ids])
    return {
        "input_ids": pad_sequence(ids, batch_first=True, padding_value=pad_token_id),
        "attention_mask": (torch.arange(int(lengths.max())) < lengths[:, None]).long(),
        "labels": pad_sequence([e["labels"] for e in examples], batch_first=True, padding_value=IGNORE_INDEX),
    }


def mask_text(
    text: str,
    tokenizer,
    mlm_probability: float = 0.15,
    seed: int | None = None,
    *,
    whole_word_masking: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokenize one text and mask it with the BERT rule; returns ``(input_ids, labels)``.

    Each call draws a new mask, as the original project's did; give `seed` for the same mask every time
    (the mask a `MaskedLanguageModelingDataset` with that seed gives its first example). With
    `whole_word_masking`, all pieces of a word are selected together, words as the (fast) tokenizer
    splits them; a slow tokenizer is refused with a ValueError (a ConfigError).

    >>> ids, labels = mask_text("The quick brown fox jumps over the lazy dog.", tokenizer, seed=0)
    >>> tokenizer.decode(ids)
    """
    if not isinstance(text, str):
        raise TypeError(f"mask_text expects a string, got {type(text).__name__}.")
    if whole_word_masking:
        require_word_ids(tokenizer)
    encoding = tokenizer(text, truncation=True)
    ids = np.array([encoding["input_ids"]], dtype=np.int64)
    starts = np.array([word_starts(encoding.word_ids())]) if whole_word_masking else None
    rule = MaskingRule(mlm_probability=mlm_probability, whole_word=whole_word_masking)
    key = key_of(seed) if seed is not None else int.from_bytes(os.urandom(8), "little")
    masked, labels = mask_array(ids, np.zeros(1), key, Vocabulary.from_tokenizer(tokenizer), rule, starts)
    return torch.from_numpy(masked[0]), torch.from_numpy(labels[0])
