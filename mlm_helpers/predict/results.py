"""What a prediction returns, and how it is decoded: `Candidate`, `Prediction`, `Filling`; a score.

Every result carries token ids, token strings, a probability and the filled-in text, and converts to
the dicts ``pipeline("fill-mask")`` returns for code written against it. The filled-in text is decoded
the same way for every kind of tokenizer (`filled_texts`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from .inputs import MaskedText

Scored = list[tuple[tuple[int, ...], float]]  # (token ids, probability or log-probability) pairs


@dataclass(frozen=True)
class Candidate:
    """One candidate for one mask.

    `token` is the vocabulary entry ("paris", "##ing", "Ġparis"; a target of several pieces: its
    pieces, spaced), `token_str` the text it decodes to (" paris" for "Ġparis"), `token_id` its (first)
    id and `token_ids` all of them, `sequence` the text with it in place of its mask (other masks stay,
    written as the tokenizer's mask token).
    """

    token: str
    probability: float
    token_id: int
    sequence: str
    token_str: str
    token_ids: tuple[int, ...]

    @property
    def word(self) -> str:
        """The candidate as a listing shows it: its text without the space a word start brings."""
        return self.token_str.strip() or self.token

    def as_dict(self) -> dict:
        return asdict(self)

    def as_pipeline_dict(self) -> dict:
        """The dict ``pipeline("fill-mask")`` gives: score, token, token_str, sequence."""
        return {"score": self.probability, "token": self.token_id, "token_str": self.token_str,
                "sequence": self.sequence}  # fmt: skip


@dataclass(frozen=True)
class Prediction:
    """The candidates for each mask of one text, in the order the masks appear, most probable first."""

    text: str
    masks: list[list[Candidate]]

    def as_pipeline(self) -> list[dict] | list[list[dict]]:
        """The pipeline's form: a list of dicts for one mask, one such list per mask for several."""
        rows = [[c.as_pipeline_dict() for c in candidates] for candidates in self.masks]
        return rows[0] if len(rows) == 1 else rows


@dataclass(frozen=True)
class Filling:
    """One way to fill every mask of a text: the filled text, a token per mask, and its score."""

    sequence: str
    tokens: tuple[str, ...]
    token_ids: tuple[int, ...]
    log_probability: float  # sum over the masks, each token given the ones filled before it

    @property
    def probability(self) -> float:
        return math.exp(self.log_probability)

    def as_dict(self) -> dict:
        return {**asdict(self), "probability": self.probability}


@dataclass(frozen=True)
class TokenScore:
    """One scored token of a text: its vocabulary entry, its id, and its log-probability there."""

    token: str
    token_id: int
    logprob: float


@dataclass(frozen=True)
class SentenceScore:
    """A text's pseudo-log-likelihood (`Predictor.score`): the sum of its tokens' log-probabilities, each
    read with that token masked (and with "word-l2r", the rest of its word to the right), and its
    pseudo-perplexity, exp(-pll / token_count)."""

    text: str
    variant: str
    pll: float
    token_count: int
    pppl: float
    tokens: tuple[TokenScore, ...]

    @classmethod
    def of(cls, text: str, variant: str, tokens: tuple[TokenScore, ...]) -> SentenceScore:
        pll = math.fsum(t.logprob for t in tokens)
        return cls(text, variant, pll, len(tokens), pseudo_perplexity(pll, len(tokens)), tokens)

    def as_dict(self) -> dict:
        return asdict(self)


def pseudo_perplexity(pll: float, token_count: int) -> float:
    """exp(-pll / token_count), inf where that overflows: a text's PPPL, or a corpus's from its texts'
    summed PLL and summed tokens scored, as Salazar et al. 2020 define it for a corpus.

    >>> pseudo_perplexity(-6.0, 3)   # exp(2)
    7.38905609893065
    """
    try:
        return math.exp(-pll / token_count)
    except OverflowError:
        return math.inf


def candidates_for(tokenizer, text: MaskedText, j: int, scored: Scored) -> list[Candidate]:
    """Candidates for mask `j` of `text` from (piece ids, probability) pairs, decoded in one call."""
    sequences = filled_texts(tokenizer, text, [{j: word} for word, _ in scored])
    words = tokenizer.batch_decode([list(word) for word, _ in scored])
    return [
        Candidate(
            token=" ".join(tokenizer.convert_ids_to_tokens(list(word))),
            probability=probability,
            token_id=word[0],
            sequence=sequence,
            token_str=token_str,
            token_ids=word,
        )
        for (word, probability), sequence, token_str in zip(scored, sequences, words)
    ]


def fillings_for(tokenizer, text: MaskedText, best: Scored) -> list[Filling]:
    """Fillings of every mask of `text` from (token per mask, log-probability) pairs."""
    sequences = filled_texts(tokenizer, text, [dict(enumerate((t,) for t in tokens)) for tokens, _ in best])
    return [
        Filling(sequence, tuple(tokenizer.convert_ids_to_tokens(list(tokens))), tokens, score)
        for sequence, (tokens, score) in zip(sequences, best)
    ]


def filled_texts(tokenizer, text: MaskedText, fills: list[dict[int, tuple[int, ...]]]) -> list[str]:
    """`text` written out once per entry of `fills`, with mask j filled in by the ids `fills[n][j]`.

    The ids are decoded as the tokenizer decodes them, without special tokens, so a word-start piece
    brings its space ("Ġparis") and a continuation glues to the word before ("##ing", "ing"): with one
    mask, filled, this is the pipeline's ``sequence``. The masks left stand as the tokenizer's mask
    token, with the space the text has before them where decoding loses it: a mask that takes the space
    before it (RoBERTa's) would decode glued to the word before.
    """
    special, respelled = set(tokenizer.all_special_ids), dict(text.respelled)
    shown = [respelled.get(i, () if token in special else (token,)) for i, token in enumerate(text.ids)]
    bounds = [-1, *text.masks, len(text.ids)]
    between = [
        [piece for ids in shown[start + 1 : stop] for piece in ids] for start, stop in zip(bounds, bounds[1:])
    ]
    sequences, spaced = [], []  # per filling: its ids, and whether the text has a space before each mask left
    for filled in fills:
        ids, before = list(between[0]), []
        for j, position in enumerate(text.masks):
            if j in filled:  # a special token filled in writes nothing, as in the pipeline
                ids += [piece for piece in filled[j] if piece not in special]
            else:
                ids.append(text.ids[position])
                before.append(text.spacing[j][0])
            ids += between[j + 1]
        sequences.append(ids)
        spaced.append(before)
    decoded = tokenizer.batch_decode(sequences)
    return [_spaced(sequence, tokenizer.mask_token, before) for sequence, before in zip(decoded, spaced)]


def _spaced(sequence: str, mask: str, before: list[bool]) -> str:
    """`sequence` with a space before each mask token where `before` says the text has one."""
    parts = sequence.split(mask)
    if len(parts) != len(before) + 1:  # a filled-in word writes the mask's text too: leave it as decoded
        return sequence
    written = parts[0]
    for space, part in zip(before, parts[1:]):
        written += (" " if space and written and not written[-1].isspace() else "") + mask + part
    return written
