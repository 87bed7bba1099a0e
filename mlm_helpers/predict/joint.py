"""Filling several [MASK] tokens together: a beam search that fills the most confident mask first.

Independent top-k (what ``pipeline("fill-mask")`` returns) predicts each mask as if the others stayed
masked, so the best words for two neighbouring masks need not fit each other. Here each step fills one
mask, the one whose best candidate is the most probable, and predicts the masks left again with it in
place: the easiest-first order of Mask-Predict (Ghazvininejad et al., 2019), with a beam over the
choices. A beam of width 1 is the plain greedy, most-confident-first fill.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

# contents (token ids, without special tokens) -> log-probabilities [masks left, vocab] for each
LogProbs = Callable[[list[list[int]]], list[torch.Tensor]]


def beam_fill(
    ids: Sequence[int],
    mask_id: int,
    log_probs: LogProbs,
    allowed: torch.Tensor,
    beam_width: int,
    top_k: int,
) -> list[tuple[tuple[int, ...], float]]:
    """The best complete fillings of the masks in `ids`, best first: (token per mask, log-probability).

    At most `top_k` and at most `beam_width` come back. `allowed` marks the token ids that may fill a
    mask; the mask token itself never does. The score of a filling is the sum of the log-probabilities
    of its tokens, each given the ones filled before it.
    """
    masks = [i for i, token in enumerate(ids) if token == mask_id]
    allowed = allowed.clone()
    allowed[mask_id] = False
    beams: dict[tuple[tuple[int, int], ...], float] = {(): 0.0}  # (position, token) pairs -> score
    for _ in masks:
        states = list(beams.items())
        grown: dict[tuple[tuple[int, int], ...], float] = {}
        for (fills, total), scores in zip(states, log_probs([_filled(ids, fills) for fills, _ in states])):
            scores = scores.masked_fill(~allowed.to(scores.device), float("-inf"))
            row = int(scores.max(dim=-1).values.argmax())
            position = [m for m in masks if m not in dict(fills)][row]
            values, tokens = scores[row].topk(min(beam_width, int(allowed.sum())))
            for value, token in zip(values.tolist(), tokens.tolist()):
                # Two orders can reach the same filling: keep its best score.
                key = tuple(sorted((*fills, (position, token))))
                grown[key] = max(grown.get(key, float("-inf")), total + value)
        beams = dict(sorted(grown.items(), key=lambda item: -item[1])[:beam_width])
    ranked = sorted(beams.items(), key=lambda item: -item[1])[:top_k]
    return [(tuple(token for _, token in fills), total) for fills, total in ranked]


def _filled(ids: Sequence[int], fills: tuple[tuple[int, int], ...]) -> list[int]:
    filled = list(ids)
    for position, token in fills:
        filled[position] = token
    return filled
