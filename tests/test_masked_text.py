"""The pure rules under prediction: windows, input checks, targets, candidate filters, beam search."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mlm_helpers.predict.filters import candidate_filter
from mlm_helpers.predict.inputs import (
    PredictionError,
    as_text_list,
    centred_window,
    chain_contents,
    check_count,
    encode_texts,
    special_frame,
    target_pieces,
)
from mlm_helpers.predict.joint import beam_fill


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 5000), st.integers(1, 600), st.data())
def test_windows_hold_every_mask_centred_or_refuse(length, size, data):
    masks = data.draw(st.lists(st.integers(0, length - 1), min_size=1, max_size=8, unique=True))
    first, last = min(masks), max(masks)
    if length > size and last - first + 1 > size:
        with pytest.raises(PredictionError, match="span"):
            centred_window(length, masks, size)
        return
    start, stop = centred_window(length, masks, size)
    assert 0 <= start <= first and last < stop <= length
    assert stop - start == min(size, length)
    before, after = first - start, stop - 1 - last
    if start > 0 and stop < length:  # not pushed against either end: centred on the masks
        assert abs(before - after) <= 1


def test_frame_and_encoding(tokenizer):
    prefix, suffix = special_frame(tokenizer)
    assert (prefix, suffix) == ([tokenizer.cls_token_id], [tokenizer.sep_token_id])
    (text,) = encode_texts(["a [MASK] b [MASK]"], tokenizer, window=100, batch=False)
    assert [text.ids[i] for i in text.masks] == [tokenizer.mask_token_id] * 2
    assert tokenizer.decode(list(text.ids)) == "a [MASK] b [MASK]"


@pytest.mark.parametrize(
    ("texts", "error", "message"),
    [
        (["a [MASK]", "no mask"], PredictionError, "Text 1 of the batch: the text has no \\[MASK\\]"),
        (["a [MASK]", "a [mask]"], PredictionError, "exactly so"),
        (["a [MASK]", " \n\t"], PredictionError, "Text 1 of the batch: the text is empty"),
        (["[MASK] " + "x " * 300 + "[MASK]"], PredictionError, "Text 0 .*span 302 tokens"),
    ],
)
def test_batch_errors_name_the_text(tokenizer, texts, error, message):
    with pytest.raises(error, match=message):
        encode_texts(texts, tokenizer, window=126, batch=True)


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        (42, TypeError, "string or a list of strings, got int"),
        (b"a [MASK]", TypeError, "got bytes"),
        (["a [MASK]", None], TypeError, "Text 1 of the batch is a NoneType"),
        ([], PredictionError, "No texts"),
    ],
)
def test_text_lists_are_checked(value, error, message):
    with pytest.raises(error, match=message):
        as_text_list(value)
    assert as_text_list("a") == (["a"], True) and as_text_list(("a", "b")) == (["a", "b"], False)


@pytest.mark.parametrize("value", [0, -1, 11, 2.0, "5", None, True])
def test_counts_are_integers_in_range(value):
    with pytest.raises(PredictionError, match="top_k must be an integer from 1 to 10"):
        check_count(value, "top_k", 10)


def test_targets_resolve_to_pieces(tokenizer):
    vocab = tokenizer.get_vocab()
    assert target_pieces(["the", "##ing", "The", "the"], tokenizer) == [(vocab["the"],), (vocab["##ing"],)]
    word = "breakfasted"
    pieces = tuple(tokenizer(word, add_special_tokens=False)["input_ids"])
    assert len(pieces) > 1 and target_pieces(word, tokenizer) == [pieces]
    for bad, error in [("§", PredictionError), ("", PredictionError), ("[MASK]", PredictionError),
                       ([], PredictionError), ([3], TypeError)]:  # fmt: skip
        with pytest.raises(error):
            target_pieces(bad, tokenizer)


def test_chain_contents_fill_one_piece_more_each_step():
    assert chain_contents([7, 4, 8, 4], 1, [20, 21, 22], mask_id=4) == [
        [7, 4, 4, 4, 8, 4],
        [7, 20, 4, 4, 8, 4],
        [7, 20, 21, 4, 8, 4],
    ]


def test_candidate_filter():
    tokens = ["[PAD]", "[MASK]", "the", "##ing", ",", "##.", "—", "a1", None]
    keep = lambda **options: candidate_filter(tokens, {0, 1}, 10, **options).tolist()
    assert keep() == [True] * 8 + [False, False]  # never ids the tokenizer cannot write
    assert keep(special=True) == [False, False] + [True] * 6 + [False] * 2
    assert keep(punctuation=True) == [True, True, True, True, False, False, False, True, False, False]
    continuation = torch.tensor([False, False, False, True, False, True, False, False, False])  # "##" pieces
    assert keep(continuation=continuation) == [True, True, True, False, True, False, True, True, False, False]


def fake_log_probs(table):
    """A 'model' whose log-probabilities at each mask depend only on what is already filled."""

    def log_probs(contents):
        return [torch.stack([table(tuple(ids), i) for i, t in enumerate(ids) if t == 0]) for ids in contents]

    return log_probs


def test_beam_fill_fills_the_most_confident_mask_first_and_keeps_the_best():
    # Vocabulary of 4; id 0 is the mask. Mask at 0 prefers token 1 weakly; mask at 1 prefers 2 strongly,
    # and once position 1 holds 2, position 0 strongly prefers 3.
    def table(ids, position):
        if position == 1:
            return torch.tensor([0.0, 0.1, 0.8, 0.1]).log()
        return torch.tensor([0.0, 0.05, 0.05, 0.9] if ids[1] == 2 else [0.0, 0.4, 0.3, 0.3]).log()

    allowed = torch.tensor([True, True, True, True])
    (greedy,) = beam_fill([0, 0], 0, fake_log_probs(table), allowed, beam_width=1, top_k=5)
    assert greedy[0] == (3, 2) and greedy[1] == pytest.approx(float(torch.tensor(0.8 * 0.9).log()))
    ranked = beam_fill([0, 0], 0, fake_log_probs(table), allowed, beam_width=3, top_k=3)
    assert [tokens for tokens, _ in ranked][0] == (3, 2)
    assert [score for _, score in ranked] == sorted((score for _, score in ranked), reverse=True)
    assert len({tokens for tokens, _ in ranked}) == 3
    without_3 = torch.tensor([True, True, True, False])
    assert all(3 not in tokens for tokens, _ in beam_fill([0, 0], 0, fake_log_probs(table), without_3, 3, 3))
