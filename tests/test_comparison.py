import dataclasses
import math

import pytest

from mlm_helpers import EvalMetrics, PredictionError, Predictor, predict_top_k_masked_word
from mlm_helpers.notebook.comparison import (
    candidates_table,
    format_candidates,
    metrics_table,
    prediction_table,
    predictions_by_model,
    scores_table,
)

from .conftest import candidate, tiny_bert

SENTENCES = ["The capital of France is [MASK].", "I love to eat [MASK] for breakfast."]


def test_predictions_by_model_asks_every_model_every_sentence(tokenizer):
    models = {
        "before": (tiny_bert(len(tokenizer), seed=0), tokenizer),
        "after": (tiny_bert(len(tokenizer), seed=1), tokenizer),
    }
    predictions = predictions_by_model(SENTENCES, models, top_k=3)
    assert list(predictions) == ["before", "after"]
    for label, (model, _) in models.items():
        expected = [predict_top_k_masked_word(s, model, tokenizer, top_k=3)[0] for s in SENTENCES]
        assert predictions[label] == expected
    assert predictions["before"] != predictions["after"]


def test_scores_table_gives_each_models_pseudo_perplexity_per_sentence_and_together(tokenizer):
    sentences = ["The dog slept by the warm fire.", "Fire the warm by slept dog the."]
    before, after = tiny_bert(len(tokenizer), seed=0), tiny_bert(len(tokenizer), seed=1).train()
    table = scores_table(sentences, {"before": (before, tokenizer), "after": (after, tokenizer)})
    assert list(table.columns) == ["before", "after"] and list(table.index) == [*sentences, "all sentences"]
    assert after.training  # its training mode is kept
    for label, model in (("before", before), ("after", after)):
        scores = Predictor(model.eval(), tokenizer, cache_size=0).score(sentences)
        assert list(table[label][:2]) == [round(s.pppl, 2) for s in scores]
        together = math.exp(-sum(s.pll for s in scores) / sum(s.token_count for s in scores))
        assert table[label].iloc[2] == round(together, 2)
    assert table["before"].iloc[0] != table["after"].iloc[0]


def test_predictions_by_model_wants_one_mask_per_sentence(tokenizer, model):
    with pytest.raises(PredictionError, match="2 \\[MASK\\] tokens"):
        predictions_by_model(["The [MASK] sat on the [MASK]."], {"m": (model, tokenizer)})


def test_prediction_table_has_a_row_per_sentence_and_a_column_per_model():
    predictions = {
        "before": [[candidate("paris", 0.41), candidate("rome", 0.042)], [candidate("eggs", 0.0004)]],
        "after": [[candidate("paris", 0.9)], [candidate("toast", 0.25)]],
    }
    table = prediction_table(SENTENCES, predictions)
    assert list(table.index) == SENTENCES and list(table.columns) == ["before", "after"]
    assert table.loc[SENTENCES[0], "before"] == "paris 41% · rome 4.2%"
    assert table.loc[SENTENCES[1], "before"] == "eggs <0.1%"
    assert table.loc[SENTENCES[1], "after"] == "toast 25%"
    with pytest.raises(ValueError, match="for 1 sentences, not 2"):
        prediction_table(SENTENCES, {"short": [[candidate("x", 0.5)]]})


def test_format_candidates_keeps_the_order():
    assert format_candidates([candidate("b", 0.5), candidate("a", 0.2)]) == "b 50% · a 20%"


def test_candidates_table_has_a_column_per_mask_and_a_row_per_rank():
    results = [
        [candidate("the", 0.5), candidate("a", 0.25)],
        [candidate("cat", 0.06), candidate("dog", 0.05)],
    ]
    table = candidates_table(results)
    assert list(table.columns) == ["[MASK] 1", "[MASK] 2"]
    assert list(table.index) == [1, 2]
    assert table["[MASK] 2"].tolist() == ["cat (6.0%)", "dog (5.0%)"]


def test_metrics_table_scales_rounds_and_keeps_the_order():
    before = EvalMetrics(loss=8.0213, perplexity=3041.234, top1=0.0, top5=0.0038, tokens=1063)
    after = EvalMetrics(loss=2.5, perplexity=math.exp(2.5), top1=0.41234, top5=0.6789, tokens=1063)
    table = metrics_table({"before": before, "after": after})
    assert list(table.columns) == ["before", "after"]
    assert table["before"].tolist() == [8.021, 3041.23, 0.0, 0.38, 1063]
    assert table["after"].tolist() == [2.5, 12.18, 41.23, 67.89, 1063]
    assert isinstance(table.loc["masked tokens scored", "after"], int)
    assert "perplexity" in table.to_string() and "top-5 accuracy (%)" in table.to_string()
    # The pseudo-perplexity has a row where it was measured (a run with --pseudo-perplexity 0: none)
    assert "pseudo-perplexity" not in table.index
    measured = {"before": dataclasses.replace(before, pseudo_perplexity=812.3456), "after": after}
    assert metrics_table(measured).loc["pseudo-perplexity"].tolist() == [812.35, None]
