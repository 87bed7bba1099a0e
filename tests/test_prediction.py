import pytest
import torch

from mlm_helpers.predict.inputs import PredictionError
from mlm_helpers.predict.predictor import predict_single_masked_word, predict_top_k_masked_word
from mlm_helpers.predict.results import Candidate


def test_top_k_candidates_are_the_most_probable_tokens(model, tokenizer):
    text = "The quick brown [MASK] jumps over the lazy dog."
    (candidates,) = predict_top_k_masked_word(text, model, tokenizer, top_k=5)
    assert len(candidates) == 5 and all(isinstance(c, Candidate) for c in candidates)
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    position = (ids[0] == tokenizer.mask_token_id).nonzero().item()
    with torch.no_grad():
        expected = model(input_ids=ids).logits[0, position].softmax(-1).topk(5)
    assert [c.token_id for c in candidates] == expected.indices.tolist()
    assert [c.probability for c in candidates] == pytest.approx(expected.values.tolist(), abs=1e-6)
    assert candidates[0].token == tokenizer.convert_ids_to_tokens(candidates[0].token_id)
    assert candidates[0].sequence == tokenizer.decode(
        [i if i != tokenizer.mask_token_id else candidates[0].token_id for i in ids[0, 1:-1].tolist()]
    )


def test_each_mask_gets_its_own_candidates(model, tokenizer):
    results = predict_top_k_masked_word("I love [MASK] and [MASK] for breakfast.", model, tokenizer, top_k=3)
    assert len(results) == 2
    assert results[0][0].sequence.count("[MASK]") == 1  # the other mask stays masked
    word = predict_single_masked_word("I love to eat [MASK] for breakfast.", model, tokenizer)
    assert (
        word
        == predict_top_k_masked_word("I love to eat [MASK] for breakfast.", model, tokenizer, 1)[0][0].token
    )


@pytest.mark.parametrize(
    ("text", "top_k", "error", "message"),
    [
        ("no mask here", 5, PredictionError, "no \\[MASK\\]"),
        ("   ", 5, PredictionError, "empty"),
        (42, 5, TypeError, "string"),
        ("a [MASK]", 0, PredictionError, "top_k"),
        ("a [MASK]", 10**9, PredictionError, "top_k"),
        # Long texts are read in a window around their masks; masks farther apart than it are refused.
        ("[MASK] " + "word " * 600 + "[MASK]", 5, PredictionError, "more than the 126 this model reads"),
        ("a [MASK] " + "word " * 200 + "[MASK]", 5, PredictionError, "span"),
    ],
)
def test_bad_input_raises_one_documented_error(model, tokenizer, text, top_k, error, message):
    with pytest.raises(error, match=message):
        predict_top_k_masked_word(text, model, tokenizer, top_k=top_k)


def test_single_word_refuses_several_masks(model, tokenizer):
    with pytest.raises(PredictionError, match="predict_top_k_masked_word"):
        predict_single_masked_word("[MASK] and [MASK]", model, tokenizer)


def test_prediction_leaves_training_mode_as_it_was(model, tokenizer):
    model.train()
    predict_top_k_masked_word("a [MASK]", model, tokenizer)
    assert model.training


def test_loading_refuses_folders_that_are_no_masked_lm(tmp_path, tokenizer):
    from transformers import BertConfig, BertModel

    from mlm_helpers import ModelLoadError, load_model

    BertModel(
        BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
        )
    ).save_pretrained(tmp_path / "encoder")
    with pytest.raises(ModelLoadError, match="BertModel, not a masked-language model"):
        load_model(tmp_path / "encoder")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(tmp_path / "empty")
    with pytest.raises(ModelLoadError, match="not found"):
        load_model(tmp_path / "missing")
