"""What a prediction returns, and how it is decoded: `Candidate`, `Prediction`, `Filling`.

Every result carries token ids, token strings, a probability and the filled-in text, and converts to
the dicts ``pipeline("fill-mask")`` returns for code written against it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from .inputs import MaskedText

Scored = list[tuple[tuple[int, ...], float]]  # (token ids, probability or log-probability) pairs


@dataclass(frozen=True)
class Candidate:
    """One candidate for one [MASK].

    `token` is the vocabulary entry ("paris", "##ing"; a target of several pieces: its pieces, spaced),
    `token_str` the text it decodes to, `token_id` its (first) id and `token_ids` all of them,
    `sequence` the text with it in place of its [MASK] (other masks stay).
    """

    token: str
    probability: float
    token_id: int
    sequence: str
    token_str: str
    token_ids: tuple[int, ...]

    def as_dict(self) -> dict:
        return asdict(self)

    def as_pipeline_dict(self) -> dict:
        """The dict ``pipeline("fill-mask")`` gives: score, token, token_str, sequence."""
        return {"score": self.probability, "token": self.token_id, "token_str": self.token_str,
                "sequence": self.sequence}  # fmt: skip


@dataclass(frozen=True)
class Prediction:
    """The candidates for each [MASK] of one text, in the order the masks appear, most probable first."""

    text: str
    masks: list[list[Candidate]]

    def as_pipeline(self) -> list[dict] | list[list[dict]]:
        """The pipeline's form: a list of dicts for one mask, one such list per mask for several."""
        rows = [[c.as_pipeline_dict() for c in candidates] for candidates in self.masks]
        return rows[0] if len(rows) == 1 else rows


@dataclass(frozen=True)
class Filling:
    """One way to fill every [MASK] of a text: the filled text, a token per mask, and its score."""

    sequence: str
    tokens: tuple[str, ...]
    token_ids: tuple[int, ...]
    log_probability: float  # sum over the masks, each token given the ones filled before it

    @property
    def probability(self) -> float:
        return math.exp(self.log_probability)

    def as_dict(self) -> dict:
        return {**asdict(self), "probability": self.probability}


def candidates_for(tokenizer, text: MaskedText, j: int, scored: Scored) -> list[Candidate]:
    """Candidates for mask `j` of `text` from (piece ids, probability) pairs, decoded in one call."""
    position, special, sequences = text.masks[j], set(tokenizer.all_special_ids), []
    for word, _ in scored:
        others = {m if m < position else m + len(word) - 1 for m in text.masks if m != position}
        sequences.append(
            readable_ids([*text.ids[:position], *word, *text.ids[position + 1 :]], others, special)
        )
    decoded = tokenizer.batch_decode(sequences + [list(word) for word, _ in scored])
    return [
        Candidate(
            token=" ".join(tokenizer.convert_ids_to_tokens(list(word))),
            probability=probability,
            token_id=word[0],
            sequence=decoded[n],
            token_str=decoded[len(scored) + n],
            token_ids=word,
        )
        for n, (word, probability) in enumerate(scored)
    ]


def fillings_for(tokenizer, text: MaskedText, best: Scored) -> list[Filling]:
    """Fillings of every mask of `text` from (token per mask, log-probability) pairs."""
    special, filled = set(tokenizer.all_special_ids), []
    for tokens, _ in best:
        ids = list(text.ids)
        for position, token in zip(text.masks, tokens):
            ids[position] = token
        filled.append(readable_ids(ids, set(), special))
    decoded = tokenizer.batch_decode(filled)
    return [
        Filling(sequence, tuple(tokenizer.convert_ids_to_tokens(list(tokens))), tokens, score)
        for sequence, (tokens, score) in zip(decoded, best)
    ]


def readable_ids(ids: Sequence[int], keep: set[int], special_ids: set[int]) -> list[int]:
    """`ids` without special tokens, except at the positions in `keep` (masks not filled in).

    With one mask, filled, this is what the pipeline decodes (``skip_special_tokens=True``); with more,
    the pipeline keeps every special token, [CLS] and [SEP] included, and we keep only the masks.
    """
    return [token for i, token in enumerate(ids) if i in keep or token not in special_ids]
