"""The Predictor's answer cache, and one Predictor serving several threads."""

import copy
import threading

import pytest
import torch

from mlm_helpers import PredictionError, Predictor
from mlm_helpers.predict.cache import CacheInfo, ResultCache

from .conftest import tiny_bert

TEXTS = [
    "The [MASK] sat by the window.",
    "She walked to the [MASK] in the rain.",
    "The [MASK] sat by the window.",  # a repeat inside one call
    "He opened the [MASK] and [MASK] at the door.",
]
SENTENCES = ["The dog sat by the window.", "She walked home in the rain.", "The dog sat by the window."]


def computed_by(cache: ResultCache, keys: list) -> tuple[list, list[list[int]]]:
    """The cache's answers to `keys`, and the positions each call of compute was given."""
    calls = []

    def compute(positions):
        calls.append(positions)
        return [f"value of {keys[p]}" for p in positions]

    return cache.answer(keys, compute), calls


def test_each_key_not_held_is_computed_once_and_the_least_recently_used_goes_first():
    cache = ResultCache(2)
    values, calls = computed_by(cache, ["a", "b", "a"])
    assert values == ["value of a", "value of b", "value of a"] and calls == [[0, 1]]
    assert cache.info() == CacheInfo(hits=1, misses=2, size=2, max_size=2)
    values, calls = computed_by(cache, ["a", "c"])  # "a" is held and now the most recent; "c" pushes out "b"
    assert values == ["value of a", "value of c"] and calls == [[1]]
    _, calls = computed_by(cache, ["b", "a", "c"])
    assert calls == [[0]]  # "b" was let go, "a" was kept; storing "b" lets "a" go, the least recent now
    assert cache.info() == CacheInfo(hits=4, misses=4, size=2, max_size=2)
    _, calls = computed_by(cache, ["a"])
    assert calls == [[0]]


def test_size_zero_computes_everything_and_a_failed_compute_stores_nothing():
    off = ResultCache(0)
    _, calls = computed_by(off, ["a", "a"])
    assert calls == [[0, 1]] and off.info() == CacheInfo(hits=0, misses=2, size=0, max_size=0)
    cache = ResultCache(4)

    def fail(positions):
        raise ValueError("no answer")

    with pytest.raises(ValueError):
        cache.answer(["a", "b"], fail)
    assert cache.info() == CacheInfo(hits=0, misses=0, size=0, max_size=4)
    cache.answer(["a"], lambda positions: ["first"])
    cache.clear_unless("version 1")  # answers stored before any version are let go on the first one
    assert cache.info().size == 0
    cache.answer(["a"], lambda positions: ["second"])
    cache.clear_unless("version 1")
    assert cache.answer(["a"], lambda positions: ["third"]) == ["second"]


@pytest.fixture(scope="module")
def model(tokenizer):
    return tiny_bert(len(tokenizer))


def test_cached_answers_are_the_computed_ones(model, tokenizer):
    cached, uncached = Predictor(model, tokenizer, batch_size=2), Predictor(model, tokenizer, cache_size=0)
    for _ in range(2):  # the second round is answered from memory
        for ours, theirs in zip(cached.predict(TEXTS, top_k=4), uncached.predict(TEXTS, top_k=4)):
            assert ours.text == theirs.text
            for mask, same in zip(ours.masks, theirs.masks):
                assert [c.token_id for c in mask] == [c.token_id for c in same]
                assert [c.probability for c in mask] == pytest.approx([c.probability for c in same], abs=1e-6)
        for ours, theirs in zip(cached.fill(TEXTS, top_k=2), uncached.fill(TEXTS, top_k=2)):
            assert [f.sequence for f in ours] == [f.sequence for f in theirs]
            scores = [f.log_probability for f in theirs]
            assert [f.log_probability for f in ours] == pytest.approx(scores, abs=1e-5)
        for ours, theirs in zip(cached.score(SENTENCES), uncached.score(SENTENCES)):
            assert ours.token_count == theirs.token_count and ours.pll == pytest.approx(theirs.pll, abs=1e-5)
    # The first round computes the 3 distinct texts of predict and fill and the 2 of score once each, and
    # answers each call's repeat from its first; the second round answers all 11 from memory.
    max_size = cached.cache_info().max_size
    assert cached.cache_info() == CacheInfo(hits=3 + 11, misses=3 + 3 + 2, size=8, max_size=max_size)
    assert uncached.cache_info().size == 0
    # Options are part of the question: other top_k, other filters, other variant are computed anew.
    cached.predict(TEXTS[0], top_k=3)
    cached.predict(TEXTS[0], top_k=4, exclude_punctuation=True)
    cached.score(SENTENCES[0], variant="original")
    assert cached.cache_info().misses == 8 + 3
    cached.cache_clear()
    assert cached.cache_info() == CacheInfo(0, 0, 0, max_size)


def test_a_repeat_in_one_batch_runs_the_model_once(model, tokenizer):
    predictor = Predictor(model, tokenizer)
    rows = []
    logits = predictor.backend.logits
    predictor.backend.logits = lambda ids, *rest: rows.append(ids.shape[0]) or logits(ids, *rest)
    predictor.predict(TEXTS)
    assert sum(rows) == 3  # four texts, one of them twice
    predictor.score(SENTENCES)
    copies = sum(len(score.tokens) for score in predictor.score(SENTENCES[:2]))  # a masked copy per token
    assert sum(rows) == 3 + copies


def test_a_cached_answer_cannot_be_changed_by_its_caller(model, tokenizer):
    predictor = Predictor(model, tokenizer)
    first = predictor.predict(TEXTS[0])
    expected = [c.token for c in first.masks[0]]
    first.masks[0].clear()
    first.masks.append([])
    fillings = predictor.fill(TEXTS[0])
    fillings.clear()
    again = predictor.predict(TEXTS[0])
    assert [c.token for c in again.masks[0]] == expected and len(again.masks) == 1
    assert len(predictor.fill(TEXTS[0])) == 5
    assert predictor.cache_info().hits == 2


def test_errors_are_not_cached_and_name_the_failing_text_of_the_whole_call(model, tokenizer):
    predictor = Predictor(model, tokenizer)
    predictor.predict(TEXTS[:2])
    with pytest.raises(PredictionError, match="Text 2 of the batch"):
        predictor.predict([*TEXTS[:2], "No mask in this one."])  # texts 0 and 1 are answered from memory
    with pytest.raises(PredictionError, match="Text 1 of the batch"):
        predictor.score([SENTENCES[0], "   "])
    assert predictor.cache_info().size == 2
    with pytest.raises(PredictionError, match="cache_size"):
        Predictor(model, tokenizer, cache_size=-1)


def test_answers_are_forgotten_when_the_weights_change(tokenizer):
    model = tiny_bert(len(tokenizer))
    predictor = Predictor(model, tokenizer)
    before = predictor.predict(TEXTS[0]).masks[0][0].probability
    assert predictor.predict(TEXTS[0]).masks[0][0].probability == before  # from memory
    with torch.no_grad():  # as an optimizer step changes them: in place
        model.cls.predictions.decoder.bias.add_(torch.linspace(-3, 3, len(tokenizer)))
    after = predictor.predict(TEXTS[0]).masks[0][0].probability
    assert after != pytest.approx(before)
    fresh = Predictor(model, tokenizer, cache_size=0).predict(TEXTS[0])
    assert after == pytest.approx(fresh.masks[0][0].probability)


def answers_of_eight_threads(predictor: Predictor, texts: list[str], sentences: list[str]) -> list:
    """What 8 threads, started together, each get for `texts` (predicted) and `sentences` (scored)."""
    start, answers, failures = threading.Barrier(8), [None] * 8, []

    def serve(n):
        start.wait()
        try:  # each thread asks in its own order, one text at a time and in batches
            order = texts[n:] + texts[:n]
            predicted = {p.text: p.masks for p in [predictor.predict(t) for t in order[:5]]}
            predicted |= {p.text: p.masks for p in predictor.predict(order[5:])}
            scores = {s.text: s.pll for s in predictor.score(sentences[::-1] if n % 2 else sentences)}
            answers[n] = ([predicted[t] for t in texts], [scores[s] for s in sentences])
        except Exception as error:  # reported with the thread's number
            failures.append((n, repr(error)))

    threads = [threading.Thread(target=serve, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures
    return answers


def test_eight_threads_answer_as_one(model, tokenizer):
    # A tokenizer saved with truncation on: transformers switches it off on the first call, a change the
    # Rust tokenizer refuses ("Already borrowed") while another thread is encoding. That first call is
    # made while the Predictor is built, before any thread can use it.
    saved_with_truncation = copy.deepcopy(tokenizer)
    saved_with_truncation.backend_tokenizer.enable_truncation(64)
    texts = [f"{text} {word}" for text in TEXTS for word in ("Then", "It rained.", "Again and again.")]
    sentences = [f"{text} {word}" for text in SENTENCES for word in ("Then", "It rained.")]
    sequential = Predictor(model, tokenizer, cache_size=0)
    expected_masks = [p.masks for p in sequential.predict(texts)]
    expected_plls = [s.pll for s in sequential.score(sentences)]
    for cache_size in (0, 64):
        predictor = Predictor(model, saved_with_truncation, batch_size=4, cache_size=cache_size)
        assert predictor.tokenizer.backend_tokenizer.truncation is None
        for masks, plls in answers_of_eight_threads(predictor, texts, sentences):
            assert plls == pytest.approx(expected_plls, abs=1e-5)
            for text_masks, expected in zip(masks, expected_masks):
                for mask, same in zip(text_masks, expected):
                    assert [c.token_id for c in mask] == [c.token_id for c in same]
                    assert [c.probability for c in mask] == pytest.approx(
                        [c.probability for c in same], abs=1e-6
                    )
