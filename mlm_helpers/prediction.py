"""Top-k predictions for [MASK] tokens, under the original project's names and signatures."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

# The original project's three examples, then two in the style of the shipped sample text.
EXAMPLE_SENTENCES = (
    "The quick brown [MASK] jumps over the lazy dog.",
    "I love to eat [MASK] for breakfast.",
    "The capital of France is [MASK].",
    "She poured herself a cup of [MASK] and sat by the window.",
    "The sun rose over the [MASK] and the birds began to sing.",
)


class PredictionError(ValueError):
    """An input the prediction helpers cannot answer; the message says what to change."""


@dataclass(frozen=True)
class Candidate:
    """One candidate for one [MASK]: the token, its probability, its id, and the text filled with it."""

    token: str
    probability: float
    token_id: int
    sequence: str

    def as_dict(self) -> dict:
        return asdict(self)


def predict_top_k_masked_word(text: str, model, tokenizer, top_k: int = 5) -> list[list[Candidate]]:
    """The `top_k` most likely tokens for each [MASK] in `text`, most likely first.

    Returns one list of candidates per [MASK], in the order the masks appear. Each mask is predicted
    independently (the other masks stay masked), as in ``transformers.pipeline("fill-mask")``.

    >>> [c.token for c in predict_top_k_masked_word("I love to eat [MASK].", model, tokenizer)[0]]
    ['it', 'them', 'breakfast', 'food', 'pizza']
    """
    ids = _encode(text, tokenizer, _length_limit(model, tokenizer))
    positions = (ids == tokenizer.mask_token_id).nonzero().flatten()
    vocab = model.get_output_embeddings().weight.shape[0]
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= vocab:
        raise PredictionError(
            f"top_k must be an integer from 1 to the vocabulary size {vocab}, got {top_k!r}."
        )
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        logits = model(input_ids=ids[None].to(device)).logits[0, positions]
    model.train(was_training)
    probabilities = logits.float().softmax(dim=-1)
    best = probabilities.topk(top_k, dim=-1)
    results = []
    for mask_index, position in enumerate(positions.tolist()):
        candidates = []
        for prob, token_id in zip(best.values[mask_index].tolist(), best.indices[mask_index].tolist()):
            filled = ids.clone()
            filled[position] = token_id
            candidates.append(
                Candidate(
                    token=tokenizer.convert_ids_to_tokens(token_id),
                    probability=prob,
                    token_id=token_id,
                    sequence=_decode(filled, tokenizer),
                )
            )
        results.append(candidates)
    return results


def predict_single_masked_word(text: str, model, tokenizer) -> str:
    """The single most likely token for the one [MASK] in `text`.

    >>> predict_single_masked_word("The capital of France is [MASK].", model, tokenizer)
    'paris'
    """
    results = predict_top_k_masked_word(text, model, tokenizer, top_k=1)
    if len(results) != 1:
        raise PredictionError(
            f"The text holds {len(results)} [MASK] tokens; predict_single_masked_word answers for "
            "exactly one. Use predict_top_k_masked_word for several."
        )
    return results[0][0].token


def _length_limit(model, tokenizer) -> int:
    limits = [
        getattr(model.config, "max_position_embeddings", None),
        getattr(tokenizer, "model_max_length", None),
    ]
    return min(limit for limit in limits if limit) if any(limits) else 10**9


def _encode(text: str, tokenizer, limit: int) -> torch.Tensor:
    if not isinstance(text, str):
        raise TypeError(f"Expected the text as a string, got {type(text).__name__}.")
    if not text.strip():
        raise PredictionError("The text is empty: give a sentence with a [MASK] in it.")
    mask = tokenizer.mask_token
    ids = tokenizer(text, truncation=False, return_tensors="pt")["input_ids"][0]
    if not (ids == tokenizer.mask_token_id).any():
        raise PredictionError(f"The text has no {mask} token: write {mask} where a word should be predicted.")
    if len(ids) > limit:
        raise PredictionError(f"The text is {len(ids)} tokens long; this model reads at most {limit}.")
    return ids


def _decode(ids: torch.Tensor, tokenizer) -> str:
    keep = [i for i in ids.tolist() if i == tokenizer.mask_token_id or i not in tokenizer.all_special_ids]
    return tokenizer.decode(keep)
