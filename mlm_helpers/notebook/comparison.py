"""Before and after, side by side: predictions and scores of several models for the same sentences, and
metrics.

The tables are pandas DataFrames, which Jupyter shows as HTML and plain Python prints as text.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import pandas as pd

from ..plots import format_probability
from ..predict.inputs import PredictionError
from ..predict.predictor import Predictor, predict_top_k_masked_word
from ..predict.results import Candidate, pseudo_perplexity
from ..predict.scoring import VARIANT
from ..training.loop import EvalMetrics


def predictions_by_model(
    sentences: Sequence[str], models: Mapping[str, tuple[object, object]], top_k: int = 5
) -> dict[str, list[list[Candidate]]]:
    """The top-k candidates of each model for each sentence: ``{label: [candidates per sentence]}``.

    `models` maps a label to ``(model, tokenizer)``. Each sentence must hold exactly one [MASK], so
    that the models answer the same question.

    >>> predictions_by_model(EXAMPLE_SENTENCES, {"before": (base, tok), "after": (tuned, tok)})
    """
    predictions = {}
    for label, (model, tokenizer) in models.items():
        answers = []
        for sentence in sentences:
            results = predict_top_k_masked_word(sentence, model, tokenizer, top_k=top_k)
            if len(results) != 1:
                raise PredictionError(
                    f"{sentence!r} holds {len(results)} [MASK] tokens; comparisons take one per sentence."
                )
            answers.append(results[0])
        predictions[label] = answers
    return predictions


def scores_table(
    sentences: Sequence[str], models: Mapping[str, tuple[object, object]], variant: str = VARIANT
) -> pd.DataFrame:
    """Each sentence's pseudo-perplexity under each model (lower: more natural to it), one column per
    label, and a last row for all the sentences together (exp of minus their summed PLL per token).

    `models` maps a label to ``(model, tokenizer)``, as in `predictions_by_model`; each model's
    training mode is kept. See `Predictor.score`.

    >>> scores_table(["The dog slept.", "Dog the slept."], {"before": (base, tok), "after": (tuned, tok)})
    """
    columns = {}
    for label, (model, tokenizer) in models.items():
        was_training = model.training
        try:
            scores = Predictor(model, tokenizer, cache_size=0).score(list(sentences), variant=variant)
        finally:
            model.train(was_training)
        together = pseudo_perplexity(math.fsum(s.pll for s in scores), sum(s.token_count for s in scores))
        columns[label] = [round(score.pppl, 2) for score in scores] + [round(together, 2)]
    index = pd.Index([*sentences, "all sentences"], name="pseudo-perplexity")
    return pd.DataFrame(columns, index=index)


def format_candidates(candidates: Sequence[Candidate]) -> str:
    """``"paris 41% · london 9% · rome 3%"``: tokens, most likely first, with their probabilities."""
    return " · ".join(f"{c.token} {format_probability(c.probability)}" for c in candidates)


def prediction_table(
    sentences: Sequence[str], predictions: Mapping[str, Sequence[Sequence[Candidate]]]
) -> pd.DataFrame:
    """One row per sentence, one column per model, each cell its candidates (see `predictions_by_model`)."""
    columns = {
        label: [format_candidates(candidates) for candidates in per_sentence]
        for label, per_sentence in predictions.items()
    }
    for label, cells in columns.items():
        if len(cells) != len(sentences):
            raise ValueError(f"{label!r} has predictions for {len(cells)} sentences, not {len(sentences)}.")
    return pd.DataFrame(columns, index=pd.Index(list(sentences), name="sentence"))


def candidates_table(results: Sequence[Sequence[Candidate]]) -> pd.DataFrame:
    """The candidates for each [MASK] of one text: one row per rank, one column per [MASK]."""
    columns = {
        f"[MASK] {number}": [f"{c.token} ({format_probability(c.probability)})" for c in candidates]
        for number, candidates in enumerate(results, start=1)
    }
    ranks = max((len(c) for c in results), default=0)
    return pd.DataFrame(columns, index=pd.RangeIndex(1, ranks + 1, name="rank"))


# (row label, EvalMetrics field, scale, decimals)
METRIC_ROWS = (
    ("loss", "loss", 1.0, 3),
    ("perplexity", "perplexity", 1.0, 2),
    ("top-1 accuracy (%)", "top1", 100.0, 2),
    ("top-5 accuracy (%)", "top5", 100.0, 2),
    ("masked tokens scored", "tokens", 1, 0),
    ("pseudo-perplexity", "pseudo_perplexity", 1.0, 2),
)


def metrics_table(metrics: Mapping[str, EvalMetrics]) -> pd.DataFrame:
    """Held-out metrics side by side, one column per label, e.g. ``{"before": ..., "after": ...}``.

    Accuracies are in percent; values are rounded for reading (loss to 3 places, the others to 2) and
    the token count stays an integer. The pseudo-perplexity has a row where it was measured (None in a
    column without it).
    """
    rows = {
        name: [None if (value := getattr(m, key)) is None else round(value * scale, decimals)
               for m in metrics.values()]
        for name, key, scale, decimals in METRIC_ROWS
        if any(getattr(m, key) is not None for m in metrics.values())
    }  # fmt: skip
    table = pd.DataFrame.from_dict(rows, orient="index", columns=list(metrics), dtype=object)
    table.index.name = "metric"
    return table
