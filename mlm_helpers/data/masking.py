"""The BERT corruption rule as a pure function, and the dataset that applies it to a stream.

Masks are a function of (seed, example position) alone: each example gets its own generator seeded from
both. A run is therefore reproducible bit for bit, a resumed run can rebuild the masks of any example,
and no mask depends on how many batches this process happened to see before it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import IterableDataset

from .examples import require_word_ids, split_word_marks, word_starts

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
    """A generator that depends on (seed, position) only. Hashing keeps seeds of nearby runs apart."""
    digest = hashlib.blake2b(f"{seed}:{position}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))


def mask_tokens(
    input_ids: torch.Tensor,
    vocab: Vocabulary,
    rule: MaskingRule,
    generator: torch.Generator,
    word_starts: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply the masking rule to a 1-D (or batched 2-D) tensor of token ids.

    Returns ``(masked_ids, labels)``: labels hold the original id where a token was selected and
    IGNORE_INDEX everywhere else. Special and padding tokens are never selected, and a random
    replacement never draws a special token. A whole-word rule needs `word_starts`, a bool tensor of
    the ids' shape: True where a piece starts a word (from the tokenizer's word ids).

    >>> masked, labels = mask_tokens(ids, vocab, MaskingRule(), example_generator(0, 0))
    """
    ids = input_ids.long()
    special = vocab.special[ids]
    if rule.whole_word:
        if word_starts is None or word_starts.shape != ids.shape:
            raise ValueError(
                "Whole-word masking needs word_starts: a bool tensor of the ids' shape, True where a "
                "piece starts a word (make_examples(..., word_marks=True) gives examples that carry them)."
            )
        # One draw per word, shared by all of its pieces: a word is selected whole or not at all. A
        # special token is a word of its own, and so is the first piece and the piece after a special
        # token: a block that begins inside a word ([CLS] ing ...) gives "ing" its own draw.
        boundary = torch.ones_like(special)  # the first piece, and each piece after a special token
        boundary[..., 1:] = special[..., :-1]
        starts = word_starts.bool() | special | boundary
        word_index = torch.cumsum(starts.long(), dim=-1) - 1
        word_draw = torch.rand(ids.shape, generator=generator)
        draw = torch.gather(word_draw, -1, word_index)
    else:
        draw = torch.rand(ids.shape, generator=generator)
    selected = (draw < rule.mlm_probability) & ~special

    action = torch.rand(ids.shape, generator=generator)
    to_mask = selected & (action < rule.mask_replace_prob)
    to_random = selected & ~to_mask & (action < rule.mask_replace_prob + rule.random_replace_prob)
    pick = torch.randint(len(vocab.random_ids), ids.shape, generator=generator)

    masked = ids.clone()
    masked[to_mask] = vocab.mask_token_id
    masked[to_random] = vocab.random_ids[pick[to_random]]
    labels = torch.where(selected, ids, torch.full_like(ids, IGNORE_INDEX))
    return masked, labels


class MaskedLanguageModelingDataset(IterableDataset):
    """A torch dataset over a stream of token-id examples that masks each example as it is read.

    ``examples`` is any re-iterable of token-id sequences (e.g. an `ExampleStream`, or a list). Example
    number ``position`` (counted from ``start``) is masked with ``example_generator(seed, position)``,
    so the same seed gives the same masks, and an example read again at a later position (the next pass
    over a small corpus) gets fresh ones. When a run's examples come from ``world_size`` streams (one per
    process, or per DataLoader worker of each process), stream ``rank`` masks its example ``position``
    as example ``position * world_size + rank`` of the whole run: streams never share masks, and one
    step's batches of several processes are masked together as one process would mask them.

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
        self.seed = seed
        self.start = start
        self.rank, self.world_size = rank, world_size

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for position, ids in enumerate(self.examples, start=self.start):
            yield self.mask_example(ids, position)

    def mask_example(self, ids: Sequence[int], position: int) -> dict[str, torch.Tensor]:
        """The masked form of one example; depends only on its ids, the seed and its position."""
        starts = None
        if self.rule.whole_word:  # the ids carry word marks: read and drop them (see data.examples)
            ids, marks = split_word_marks(ids)
            starts = torch.tensor(marks, dtype=torch.bool)
        tensor = torch.as_tensor(ids, dtype=torch.long)
        generator = example_generator(self.seed, position * self.world_size + self.rank)
        masked, labels = mask_tokens(tensor, self.vocab, self.rule, generator, starts)
        return {"input_ids": masked, "labels": labels}


def collate(examples: list[dict[str, torch.Tensor]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Stack examples into a batch, padding to the longest one (packed blocks need no padding)."""
    length = max(len(e["input_ids"]) for e in examples)
    batch = {
        "input_ids": torch.full((len(examples), length), pad_token_id, dtype=torch.long),
        "attention_mask": torch.zeros((len(examples), length), dtype=torch.long),
        "labels": torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long),
    }
    for row, example in enumerate(examples):
        n = len(example["input_ids"])
        batch["input_ids"][row, :n] = example["input_ids"]
        batch["attention_mask"][row, :n] = 1
        batch["labels"][row, :n] = example["labels"]
    return batch


def mask_text(
    text: str,
    tokenizer,
    mlm_probability: float = 0.15,
    seed: int | None = None,
    *,
    whole_word_masking: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokenize one text and mask it with the BERT rule; returns ``(input_ids, labels)``.

    Each call draws a new mask, as the original project's did; give `seed` for the same mask every time.
    With `whole_word_masking`, all pieces of a word are selected together, words as the (fast)
    tokenizer splits them; a slow tokenizer is refused with a ValueError (a ConfigError).

    >>> ids, labels = mask_text("The quick brown fox jumps over the lazy dog.", tokenizer, seed=0)
    >>> tokenizer.decode(ids)
    """
    if not isinstance(text, str):
        raise TypeError(f"mask_text expects a string, got {type(text).__name__}.")
    if whole_word_masking:
        require_word_ids(tokenizer)
    encoding = tokenizer(text, truncation=True)
    ids = torch.tensor(encoding["input_ids"], dtype=torch.long)
    starts = torch.tensor(word_starts(encoding.word_ids()), dtype=torch.bool) if whole_word_masking else None
    rule = MaskingRule(mlm_probability=mlm_probability, whole_word=whole_word_masking)
    generator = example_generator(seed, 0) if seed is not None else torch.Generator().manual_seed(
        int.from_bytes(os.urandom(8), "little") & (2**63 - 1)
    )  # fmt: skip
    return mask_tokens(ids, Vocabulary.from_tokenizer(tokenizer), rule, generator, starts)
