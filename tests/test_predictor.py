"""The Predictor on PyTorch: the pipeline's answers, batches, several masks, targets, filters, long texts."""

import math

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from transformers import pipeline

from mlm_helpers import ModelLoadError, Prediction, PredictionError, Predictor
from mlm_helpers.predict.predictor import EXAMPLE_SENTENCES

from .conftest import tiny_bert

SENTENCES = [
    *EXAMPLE_SENTENCES,
    "A [MASK].",
    "Rain fell on the old stone bridge all through the [MASK] night.",
]


@pytest.fixture(scope="module")
def predictor(tokenizer):
    # No cache: these tests compare what each call computes (test_result_cache.py tests the cache)
    return Predictor(tiny_bert(len(tokenizer)), tokenizer, batch_size=3, cache_size=0)


def assert_same_as_pipeline(ours, theirs):
    assert [c["token"] for c in ours] == [c["token"] for c in theirs]
    assert [c["score"] for c in ours] == pytest.approx([c["score"] for c in theirs], abs=1e-5)
    assert [c["token_str"] for c in ours] == [c["token_str"] for c in theirs]
    assert [c["sequence"] for c in ours] == [c["sequence"] for c in theirs]


@pytest.mark.parametrize("top_k", [1, 5, 40])
def test_single_mask_answers_as_the_pipeline(predictor, tokenizer, top_k):
    fill_mask = pipeline("fill-mask", model=predictor.backend.module.model, tokenizer=tokenizer)
    for text in SENTENCES:
        assert_same_as_pipeline(predictor(text, top_k=top_k), fill_mask(text, top_k=top_k))
    targets = ["the", "dog", "window", "##s"]
    assert set(targets) <= set(tokenizer.get_vocab())  # the pipeline cuts other words to their first piece
    for text in SENTENCES[:2]:
        assert_same_as_pipeline(predictor(text, targets=targets), fill_mask(text, targets=targets))
    several = "The [MASK] sat by the [MASK]."
    for ours, theirs in zip(predictor(several), fill_mask(several)):  # sequences differ: no [CLS]/[SEP]
        assert [c["token"] for c in ours] == [c["token"] for c in theirs]
        assert [c["score"] for c in ours] == pytest.approx([c["score"] for c in theirs], abs=1e-5)


def test_batches_answer_as_single_calls_in_order(predictor):
    batch = predictor.predict(SENTENCES + ["[MASK] and [MASK] and [MASK]"], top_k=3)
    assert [result.text for result in batch] == SENTENCES + ["[MASK] and [MASK] and [MASK]"]
    for result in batch:
        alone = predictor.predict(result.text, top_k=3)
        assert isinstance(alone, Prediction) and len(alone.masks) == len(result.masks)
        for ours, single in zip(result.masks, alone.masks):
            assert [c.token_id for c in ours] == [c.token_id for c in single]
            assert [c.probability for c in ours] == pytest.approx([c.probability for c in single], abs=1e-5)
    assert predictor(["A [MASK]."]) == predictor("A [MASK].")  # the pipeline unwraps a list of one


def test_several_masks_are_predicted_each_with_the_others_masked(predictor):
    (first, second) = predictor.predict("The [MASK] sat by the [MASK].", top_k=2).masks
    assert first[0].sequence.startswith("the " + first[0].token_str) and first[0].sequence.endswith("[MASK].")
    assert second[0].sequence.startswith("the [MASK] sat")


def test_a_target_of_several_pieces_is_scored_by_the_chain_rule(predictor, tokenizer):
    word = "breakfasted"
    pieces = tokenizer(word, add_special_tokens=False)["input_ids"]
    assert len(pieces) > 1
    (candidates,) = predictor.predict("I [MASK] early.", targets=[word, "ate"]).masks
    by_word = {c.token_str: c for c in candidates}
    assert set(by_word) == {word, "ate"} and by_word[word].token_ids == tuple(pieces)
    assert by_word[word].sequence == f"i {word} early."
    # By hand: one [MASK] per piece, then each piece given those before it.
    model, expected = predictor.backend.module.model, 1.0
    for i, piece in enumerate(pieces):
        ids = [tokenizer.cls_token_id, *tokenizer("I", add_special_tokens=False)["input_ids"], *pieces[:i]]
        ids += (
            [tokenizer.mask_token_id] * (len(pieces) - i)
            + tokenizer(" early.", add_special_tokens=False)["input_ids"]
            + [tokenizer.sep_token_id]
        )
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, ids.index(tokenizer.mask_token_id)]
        expected *= logits.softmax(-1)[piece].item()
    assert by_word[word].probability == pytest.approx(expected, rel=1e-4)


def test_filters_leave_out_special_tokens_punctuation_and_pieces(predictor, tokenizer):
    vocab = len(tokenizer)
    everything = predictor.predict("Well [MASK]", top_k=vocab).masks[0]
    assert len(everything) == vocab and {c.token for c in everything} == set(tokenizer.get_vocab())
    kept = predictor.predict(
        "Well [MASK]", top_k=vocab, exclude_special=True, exclude_punctuation=True, exclude_subwords=True
    ).masks[0]
    tokens = {c.token for c in kept}
    assert tokens and not tokens & set(tokenizer.all_special_tokens)
    assert not any(t.startswith("##") or t in {".", ",", "!", "?", "'", '"'} for t in tokens)
    assert [c.probability for c in kept] == sorted((c.probability for c in kept), reverse=True)


def test_joint_fill(predictor):
    one_mask = predictor.fill("The capital of France is [MASK].", top_k=3, exclude_special=True)
    independent = predictor.predict("The capital of France is [MASK].", top_k=3, exclude_special=True).masks[
        0
    ]
    assert [f.token_ids for f in one_mask] == [(c.token_id,) for c in independent]
    assert [f.probability for f in one_mask] == pytest.approx([c.probability for c in independent], rel=1e-4)
    text = "The [MASK] [MASK] jumps over the [MASK] dog."
    greedy = predictor.fill(text, top_k=1, beam_width=1, exclude_special=True)
    assert len(greedy) == 1 and "[MASK]" not in greedy[0].sequence and len(greedy[0].tokens) == 3
    ids, fills = predictor.tokenizer(text, add_special_tokens=False)["input_ids"], iter(greedy[0].token_ids)
    filled = [next(fills) if i == predictor.tokenizer.mask_token_id else i for i in ids]
    assert greedy[0].sequence == predictor.tokenizer.decode(filled)
    beams = predictor.fill([text, "A [MASK]."], top_k=4, beam_width=6)
    assert [len(b) for b in beams] == [4, 4]
    scores = [f.log_probability for f in beams[0]]
    assert scores == sorted(scores, reverse=True) and len({f.token_ids for f in beams[0]}) == 4
    assert math.isclose(beams[0][0].as_dict()["probability"], math.exp(scores[0]))


def test_long_texts_are_read_in_a_window_centred_on_the_masks(predictor):
    long = "the " * 1000 + "[MASK]" + " the" * 1000
    window = "the " * 63 + "[MASK]" + " the" * 62  # 126 text tokens: the tiny model's 128 minus 2
    (far,) = predictor.predict(long).masks
    (near,) = predictor.predict(window).masks
    assert [c.token_id for c in far] == [c.token_id for c in near]
    assert [c.probability for c in far] == pytest.approx([c.probability for c in near], abs=1e-6)
    assert far[0].sequence.count("the") >= 2000  # the whole text, filled in
    with pytest.raises(PredictionError, match="span 1002 tokens, more than the 126"):
        predictor.predict("[MASK] " + "the " * 1000 + "[MASK]")


def test_bf16_where_the_hardware_has_it(predictor, tokenizer, monkeypatch):
    import mlm_helpers.predict.torch_backend as backends

    model = predictor.backend.module.model
    if not backends.bf16_supported(torch.device("cpu")):
        with pytest.raises(PredictionError, match="leave bf16 off"):
            Predictor(model, tokenizer, bf16=True)
        monkeypatch.setattr(backends, "bf16_supported", lambda device: True)  # slow, but it runs
    best = predictor.predict("The capital of France is [MASK].").masks[0][0]
    in_bf16 = Predictor(model, tokenizer, bf16=True).predict(
        "The capital of France is [MASK].", targets=best.token
    )
    assert in_bf16.masks[0][0].probability == pytest.approx(best.probability, rel=0.05)


def test_cpu_linear_layers_run_through_onednn_on_the_models_own_weights(tokenizer, monkeypatch):
    import mlm_helpers.predict.torch_backend as backends

    if not backends.onednn_works():
        pytest.skip("this torch build has no oneDNN inner product")
    model = tiny_bert(len(tokenizer))
    small = Predictor(model, tokenizer)  # layers this small stay with the matmul, which is faster there
    assert not [m for m in small.backend.module.modules() if isinstance(m, backends.OneDnnLinear)]
    backends.onednn_works.cache_clear()  # its check runs again, and must not draw from torch's generator
    state = torch.random.get_rng_state()
    assert backends.onednn_works() and torch.equal(torch.random.get_rng_state(), state)
    monkeypatch.setattr(backends, "ONEDNN_FROM", 0)
    fast = Predictor(model, tokenizer)
    assert not [m for m in fast.backend.module.modules() if type(m) is torch.nn.Linear]
    assert [m for m in model.modules() if type(m) is torch.nn.Linear]  # the caller's model is as it was
    monkeypatch.setattr(backends, "onednn_works", lambda: False)
    plain = Predictor(model, tokenizer)
    assert [m for m in plain.backend.module.modules() if type(m) is torch.nn.Linear]
    for ours, theirs in zip(fast.predict(SENTENCES), plain.predict(SENTENCES)):
        assert [c.token for c in ours.masks[0]] == [c.token for c in theirs.masks[0]]
        assert [c.probability for c in ours.masks[0]] == pytest.approx(
            [c.probability for c in theirs.masks[0]], abs=1e-6
        )
    # The model trained further (here: the runner-up's bias raised) is what the predictor computes with.
    runner_up = fast.predict(SENTENCES[0]).masks[0][1]
    with torch.no_grad():
        model.cls.predictions.decoder.bias[runner_up.token_id] += 100.0
    assert fast.predict(SENTENCES[0]).masks[0][0].token == runner_up.token


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_a_gpu(tokenizer):
    model = tiny_bert(len(tokenizer))
    on_cpu = Predictor(model, tokenizer, device="cpu").predict(SENTENCES)
    on_gpu = Predictor(model, tokenizer, device="cuda").predict(SENTENCES)
    for cpu, gpu in zip(on_cpu, on_gpu):
        assert [c.probability for c in cpu.masks[0]] == pytest.approx(
            [c.probability for c in gpu.masks[0]], abs=1e-5
        )
    if torch.cuda.is_bf16_supported():
        assert Predictor(model, tokenizer, device="cuda", bf16=True).predict(SENTENCES[0]).masks[0]


def test_a_tokenizer_larger_than_the_model_or_a_missing_device_is_refused(tokenizer):
    with pytest.raises(PredictionError, match="load the tokenizer saved with this model"):
        Predictor(tiny_bert(len(tokenizer) // 2), tokenizer)
    for device in ["gpu", "cuda:99", "nonsense:0"]:
        with pytest.raises(PredictionError, match="No device"):
            Predictor(tiny_bert(len(tokenizer)), tokenizer, device=device)


def test_load_reports_what_is_missing(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        Predictor.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        Predictor.load(tmp_path / "empty")


WORDS = ["the", "dog", "sat", ",", ".", "window", "breakfast", "é", "🙂", "[SEP]", "[CLS]", "[PAD]", "[MASK]"]
piece = st.one_of(st.sampled_from(WORDS), st.text(max_size=6))


@st.composite
def texts(draw, filler=2500):
    """Up to thousands of tokens: filler, then words and odd characters with [MASK]s among them, filler."""
    middle = draw(st.lists(piece, max_size=12))
    for position in draw(st.lists(st.integers(0, len(middle)), max_size=3)):
        middle.insert(position, "[MASK]")
    left, right = draw(st.integers(0, filler)), draw(st.integers(0, filler))
    return "w " * left + " ".join(middle) + " w" * right


anything = st.one_of(st.integers(-3, 1003), st.none(), st.floats(), st.text(max_size=3), st.binary())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.tuples(st.one_of(texts(), st.lists(texts(), min_size=1, max_size=4)), st.integers(-2, 20)),
        # Each candidate carries its whole filled-in text: a thousand of them, on short texts only.
        st.tuples(
            st.one_of(texts(100), st.lists(texts(100), max_size=2)), st.sampled_from([999, 1000, 1001])
        ),
    )
)
def test_predict_answers_any_text_or_says_why(predictor, case):
    text, top_k = case
    try:
        results = predictor.predict(text, top_k=top_k)
    except PredictionError as error:
        assert str(error)
        event("refused")
        return
    event("answered")
    for result in results if isinstance(results, list) else [results]:
        assert len(result.masks) == result.text.count("[MASK]")
        for candidates in result.masks:
            assert len(candidates) == top_k
            probabilities = [c.probability for c in candidates]
            assert probabilities == sorted(probabilities, reverse=True) and 0 <= probabilities[-1] <= 1


@settings(max_examples=40, deadline=None)
@given(
    st.one_of(anything, st.lists(st.one_of(texts(), anything), max_size=4)), st.one_of(anything, st.just(5))
)
def test_wrong_types_raise_type_or_prediction_errors(predictor, text, top_k):
    try:
        predictor.predict(text, top_k=top_k)
    except (PredictionError, TypeError) as error:
        assert str(error)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(texts(), st.integers(-1, 4), st.one_of(st.text(max_size=12), st.lists(piece, max_size=3), anything))
def test_fill_and_targets_raise_nothing_but_their_documented_errors(predictor, text, top_k, targets):
    for call in (
        lambda: predictor.fill(text, top_k=top_k, beam_width=2),
        lambda: predictor.predict(text, top_k=top_k, targets=targets),
    ):
        try:
            call()
        except (PredictionError, TypeError) as error:
            assert str(error)
