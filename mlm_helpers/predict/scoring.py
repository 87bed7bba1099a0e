"""Scoring whole sentences with a masked LM: the pseudo-log-likelihood (PLL) and pseudo-perplexity.

Salazar et al. 2020, "Masked Language Model Scoring" (ACL, arXiv:1910.14659): a sentence's PLL is the
sum over its tokens of log P(token | the sentence with that token alone masked), and its pseudo-perplexity
is PPPL = exp(-PLL / tokens scored). Kauf & Ivanova 2023, "A Better Way to Do Masked Language Model
Scoring" (ACL, arXiv:2305.10588): a word of several pieces scores far too well that way, since its other
pieces give the masked one away ("so ##uve ##nir"), so "PLL-word-l2r" also masks the pieces of the same
word to the right of the scored one. That is the default variant here; "original" is Salazar's.

Each scored token is one masked copy of its text. All copies of all texts go through the backend in
batches of similar length, and the vocabulary projection runs at the scored position of each copy only
(the backend's logits at given flat positions). A text longer than the model reads is scored in windows:
each copy holds the window of the text centred on its scored token (`inputs.centred_window`), so every
token is scored, none cut. Special tokens (the frame the tokenizer adds, and any "[UNK]", "[MASK]" or
"[SEP]" in the text) are never scored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .inputs import PredictionError, as_text_list, centred_window, check_count
from .results import SentenceScore, TokenScore
from .torch_backend import Backend, padded

VARIANTS = ("word-l2r", "original")
VARIANT = "word-l2r"  # Kauf & Ivanova's: no inflated scores for words of several pieces
# Masked copies per forward pass. A sentence of n tokens is n copies of one length, so batches waste
# nothing on padding; 64 copies of a ~20-token sentence made the matrix products efficient on a CPU.
SCORE_BATCH_SIZE = 64


@dataclass(frozen=True)
class ScoredText:
    """One text to score: its token ids (no special tokens added), the positions scored, its word ids."""

    text: str
    ids: tuple[int, ...]
    scored: tuple[int, ...]
    words: tuple[int | None, ...] | None  # per id, the word it belongs to; None for "original"


def score_texts(
    texts: str | Sequence[str],
    backend: Backend,
    tokenizer,
    frame: tuple[list[int], list[int]],
    window: int,
    *,
    variant: str = VARIANT,
    batch_size: int = SCORE_BATCH_SIZE,
) -> SentenceScore | list[SentenceScore]:
    """The PLL of each text: one `SentenceScore` for a string, a list for a list (`Predictor.score`).

    `frame` is the ids the tokenizer puts before and after a text, `window` how many text tokens the
    model reads at once.
    """
    if isinstance(texts, (list, tuple)) and not texts:
        raise PredictionError("No texts given: pass a string, or a list of strings, to score.")
    items, single = as_text_list(texts)
    if variant not in VARIANTS:
        raise PredictionError(f"variant must be one of {', '.join(map(repr, VARIANTS))}, got {variant!r}.")
    batch_size = check_count(batch_size, "batch_size", 2**20)
    encoded = encode_for_scoring(items, tokenizer, variant, batch=not single)
    mask_id = tokenizer.mask_token_id
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    prefix, suffix = frame
    copies = [(t, p) for t, text in enumerate(encoded) for p in text.scored]

    # (row, scored position in it) of a copy; built a batch at a time, so a long text's copies never all
    # sit in memory together.
    def row(copy: tuple[int, int]) -> tuple[list[int], int]:
        text = encoded[copy[0]]
        ids = masked_copy(text.ids, copy[1], text.words, mask_id)
        start, stop = centred_window(len(ids), [copy[1]], window)
        return [*prefix, *ids[start:stop], *suffix], len(prefix) + copy[1] - start

    lengths = [len(prefix) + min(len(encoded[t].ids), window) + len(suffix) for t, _ in copies]
    order = sorted(range(len(copies)), key=lengths.__getitem__)
    logprobs = [0.0] * len(copies)
    for first in range(0, len(order), batch_size):
        chunk = order[first : first + batch_size]
        rows, targets = zip(*(row(copies[i]) for i in chunk))
        ids, attention = padded(list(rows), pad_id)
        flat = torch.tensor([n * ids.shape[1] + target for n, target in enumerate(targets)])
        logits = backend.logits(ids, attention, flat).float()
        truth = torch.tensor([encoded[copies[i][0]].ids[copies[i][1]] for i in chunk])
        picked = logits.log_softmax(dim=-1).gather(1, truth[:, None].to(logits.device))[:, 0]
        for i, value in zip(chunk, picked.tolist()):
            logprobs[i] = value
    results, at = [], 0
    for text in encoded:
        values, at = logprobs[at : at + len(text.scored)], at + len(text.scored)
        ids = [text.ids[p] for p in text.scored]
        tokens = tuple(
            TokenScore(token, token_id, value)
            for token, token_id, value in zip(tokenizer.convert_ids_to_tokens(ids), ids, values)
        )
        results.append(SentenceScore.of(text.text, variant, tokens))
    return results[0] if single else results


def encode_for_scoring(texts: Sequence[str], tokenizer, variant: str, batch: bool) -> list[ScoredText]:
    """Tokenize `texts` in one call; the positions to score (all but special tokens), and word ids.

    Word ids come from the fast tokenizer (`word_ids()`), which knows the words of WordPiece, BPE and
    SentencePiece alike; "word-l2r" needs them, "original" does not.
    """
    words_needed = variant == "word-l2r"
    if words_needed and not getattr(tokenizer, "is_fast", False):
        raise PredictionError(
            "variant 'word-l2r' needs the word boundaries of the model's fast tokenizer (word_ids), and "
            "this tokenizer is a slow one: load the fast tokenizer (use_fast=True), or score with "
            "variant='original'."
        )
    # verbose=False: a text longer than the model is no mistake here, it is scored in windows
    encoding = tokenizer(list(texts), add_special_tokens=False, verbose=False)
    special = set(tokenizer.all_special_ids)
    encoded = []
    for index, text in enumerate(texts):
        where = f"Text {index} of the batch: " if batch else ""
        if not text.strip():
            raise PredictionError(f"{where}the text is empty: give a sentence to score.")
        ids = tuple(encoding["input_ids"][index])
        scored = tuple(p for p, token in enumerate(ids) if token not in special)
        if not scored:
            raise PredictionError(
                f"{where}the text holds no token to score, only special ones "
                f"({' '.join(tokenizer.convert_ids_to_tokens(list(ids)))}): give a sentence of words."
            )
        words = tuple(encoding.word_ids(index)) if words_needed else None
        encoded.append(ScoredText(text, ids, scored, words))
    return encoded


def masked_copy(
    ids: Sequence[int], position: int, words: Sequence[int | None] | None, mask_id: int
) -> list[int]:
    """`ids` with `position` masked and, given word ids (word-l2r), the pieces of its word to its right.

    >>> masked_copy([5, 6, 7, 8], 1, [0, 1, 1, 2], mask_id=4)   # the word 6 7: score 6 without 7 to help
    [5, 4, 4, 8]
    """
    copy = list(ids)
    copy[position] = mask_id
    word = None if words is None else words[position]
    if word is not None:
        for later in range(position + 1, len(copy)):
            if words[later] != word:
                break
            copy[later] = mask_id
    return copy
