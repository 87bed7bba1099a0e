"""Which tokens `predict` and `fill` may offer: one table of allowed ids per set of exclude_* options.

The options leave out special tokens, punctuation, and the pieces that only continue a word. A token's
punctuation is judged on what it writes ("Ġ," and "▁." write ","), so it works for every vocabulary.
"""

from __future__ import annotations

import string
import threading
import unicodedata
from collections.abc import Sequence

import torch

from ..families import continuation_pieces
from .inputs import PredictionError


class CandidateFilters:
    """The allowed ids of a tokenizer and model, per set of options, each table made once and kept.

    Thread-safe: two threads asking for a new table at once make it once.
    """

    def __init__(self, tokenizer, vocab_size: int, device: torch.device, continuation_mark: str) -> None:
        self.tokenizer, self.vocab_size, self.device = tokenizer, vocab_size, device
        self.continuation_mark = continuation_mark  # "##" in WordPiece, "" where starts are marked
        self._tables: dict[tuple[bool, bool, bool], torch.Tensor] = {}
        self._lock = threading.Lock()

    def allowed(self, special: bool, punctuation: bool, subwords: bool) -> torch.Tensor:
        """bool[vocab_size] on the model's device: the ids that may be offered."""
        key = (special, punctuation, subwords)
        with self._lock:
            if key not in self._tables:
                self._tables[key] = self._table(special, punctuation, subwords).to(self.device)
            return self._tables[key]

    def _table(self, special: bool, punctuation: bool, subwords: bool) -> torch.Tensor:
        size = len(self.tokenizer)
        if not (special or punctuation or subwords):  # every id the tokenizer can write
            return torch.arange(self.vocab_size) < size
        tokens = self.tokenizer.convert_ids_to_tokens(list(range(min(self.vocab_size, size))))
        words = self._written(tokens) if punctuation else tokens
        continuation = self._continuation() if subwords else None
        return candidate_filter(words, set(self.tokenizer.all_special_ids), self.vocab_size, special=special,
                                punctuation=punctuation, continuation=continuation)  # fmt: skip

    def _written(self, tokens: list[str | None]) -> list[str | None]:
        """What each token writes on its own, without its word mark: "," for "Ġ,", "—" for "âĢĶ"."""
        write, mark = self.tokenizer.convert_tokens_to_string, self.continuation_mark
        return [None if token is None else write([token]).strip().removeprefix(mark) for token in tokens]

    def _continuation(self) -> torch.Tensor:
        try:
            return continuation_pieces(self.tokenizer)
        except ValueError as error:
            raise PredictionError(f"exclude_subwords cannot tell word pieces apart here: {error}") from None


def candidate_filter(
    words: Sequence[str | None],
    special_ids: set[int],
    vocab_size: int,
    *,
    special: bool = False,
    punctuation: bool = False,
    continuation: torch.Tensor | None = None,
) -> torch.Tensor:
    """Which of the model's `vocab_size` ids may be offered as candidates, as a bool tensor.

    `words` is what each id of the tokenizer writes on its own, without its word mark ("ing" for
    "##ing", "," for "Ġ,"); ids it cannot write (None, or beyond it) are never offered. `special` and
    `punctuation` leave out special tokens and ids that write only punctuation; `continuation` (one
    bool per id, `families.continuation_pieces`) leaves out the pieces that only continue a word.
    """
    allowed = torch.tensor(
        [
            word is not None
            and not ((special and token_id in special_ids) or (punctuation and _is_punctuation(word)))
            for token_id, word in enumerate(words[:vocab_size])
        ]
        + [False] * max(vocab_size - len(words), 0),
        dtype=torch.bool,
    )
    if continuation is not None:
        size = min(vocab_size, len(continuation))
        allowed[:size] &= ~continuation[:size]
    return allowed


def _is_punctuation(token: str) -> bool:
    # BERT counts every ASCII non-alphanumeric character as punctuation, and Unicode's P* categories.
    return bool(token) and all(c in string.punctuation or unicodedata.category(c)[0] == "P" for c in token)
