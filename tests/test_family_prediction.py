"""Prediction for every family: each tokenizer's own mask token and the "[MASK]" alias, targets in the
form a word takes after a space, filters, windows within RoBERTa's shifted positions, the filled-in
text, and the ONNX backend, on the tiny random models of tests/families.py."""

import copy
import json
import re

import pytest
import torch

from mlm_helpers import PredictionError, Predictor, predict_single_masked_word, predict_top_k_masked_word
from mlm_helpers.cli import main
from mlm_helpers.families import continuation_pieces, word_marker
from mlm_helpers.predict.filters import candidate_filter
from mlm_helpers.predict.inputs import mask_spacing
from mlm_helpers.predict.predictor import EXAMPLE_SENTENCES

from .families import FAMILIES, MAX_LENGTH, family_model, family_tokenizer, save_family

CASED = {"roberta", "albert", "deberta-v2", "modernbert", "xlm-roberta"}  # the others lowercase


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    return request.param


@pytest.fixture(scope="module")
def predictor(family):
    return Predictor(family_model(family), family_tokenizer(family), batch_size=3, cache_size=0)


def written(family: str, text: str) -> str:
    """`text` as the family's tokenizer writes it back: lowercased by the uncased WordPiece ones."""
    return text if family in CASED else text.lower()


def by_hand(predictor, text: str) -> torch.Tensor:
    """Probabilities at the text's masks from the model's own forward, as a user would compute them."""
    tokenizer, model = predictor.tokenizer, predictor.backend.module.model
    encoding = tokenizer(text, return_tensors="pt")
    with torch.no_grad():  # input_ids and attention_mask only: not every family takes token_type_ids
        logits = model(input_ids=encoding["input_ids"], attention_mask=encoding["attention_mask"]).logits
    return logits[encoding["input_ids"] == tokenizer.mask_token_id].softmax(-1)


def test_the_mask_token_and_the_bert_alias_give_the_models_own_answer(family, predictor):
    mask = predictor.tokenizer.mask_token
    assert mask == ("<mask>" if family in ("roberta", "xlm-roberta") else "[MASK]")
    own, alias = f"The sky was {mask} and the {mask} sang.", "The sky was [MASK] and the [MASK] sang."
    ours, aliased = predictor.predict([own, alias], top_k=5)
    assert [ours.text, aliased.text] == [own, alias]  # the text as given
    expected = by_hand(predictor, own).topk(5)
    for j, (candidates, same) in enumerate(zip(ours.masks, aliased.masks)):
        assert [c.token_id for c in candidates] == expected.indices[j].tolist()
        assert [c.probability for c in candidates] == pytest.approx(expected.values[j].tolist(), abs=1e-5)
        assert [(c.token_id, c.sequence) for c in candidates] == [(c.token_id, c.sequence) for c in same]
    # The mask left stands as the model's mask token, spaced as in the text, whatever decoding would do.
    assert ours.masks[0][0].sequence.endswith(f" the {mask} sang.")
    assert ours.masks[1][0].sequence.startswith(written(family, "The sky was ") + f"{mask} and the")


def test_errors_name_the_models_mask_token(family, predictor):
    mask = re.escape(predictor.tokenizer.mask_token)
    with pytest.raises(PredictionError, match=f"the text has no {mask} token: write {mask}"):
        predictor.predict("The sky was blue.")
    with pytest.raises(PredictionError, match=f"holds 2 {mask} tokens"):
        predict_single_masked_word("[MASK] and [MASK]", predictor.backend.module.model, predictor.tokenizer)
    with pytest.raises(PredictionError, match=f"the {mask} tokens span"):
        predictor.predict("[MASK] " + "the " * 300 + "[MASK]")


@pytest.mark.parametrize("word", ["unearthly", "blue"])
def test_targets_are_scored_as_the_word_after_a_space(family, predictor, word):
    tokenizer = predictor.tokenizer
    side, mark = word_marker(tokenizer)
    (candidate,) = predictor.predict("The sky was [MASK].", targets=word).masks[0]
    pieces = tokenizer.convert_ids_to_tokens(list(candidate.token_ids))
    if side == "starts":  # "Ġun ear th ly", "▁ u ne arth ly": the word's first piece starts it
        assert pieces[0].startswith(mark) and not any(p.startswith(mark) for p in pieces[1:])
    else:
        assert candidate.token_ids == tuple(tokenizer(word, add_special_tokens=False)["input_ids"])
    assert tokenizer.decode(list(candidate.token_ids)).strip() == word
    assert candidate.sequence == written(family, f"The sky was {word}.")  # no glued words, no " ."
    (_, second) = predictor.predict("The [MASK] sat by the [MASK].", targets=word).masks
    assert second[0].sequence == written(family, "The {} sat by the {}.").format(tokenizer.mask_token, word)
    if len(pieces) == 1:  # one piece: the probability the full vocabulary gives it
        everything = predictor.predict("The sky was [MASK].", top_k=len(tokenizer)).masks[0]
        same = next(c for c in everything if c.token_id == candidate.token_id)
        assert candidate.probability == pytest.approx(same.probability, rel=1e-6)


def test_a_target_spelled_as_a_vocabulary_entry_is_that_entry(family, predictor):
    tokenizer = predictor.tokenizer
    side, mark = word_marker(tokenizer)
    entry = "the" if side == "continues" else mark + "the"
    entry_id = tokenizer.convert_tokens_to_ids(entry)
    assert tokenizer.convert_ids_to_tokens(entry_id) == entry
    candidates = predictor.predict("I saw [MASK] dog.", targets=["the", entry]).masks[0]
    assert [c.token_ids for c in candidates] == [(entry_id,)]  # "the" after a space is that entry


def test_exclude_subwords_leaves_out_exactly_the_continuation_pieces(family, predictor):
    size = len(predictor.tokenizer)
    every = {c.token_id for c in predictor.predict("Well [MASK]", top_k=size).masks[0]}
    kept = {c.token_id for c in predictor.predict("Well [MASK]", top_k=size, exclude_subwords=True).masks[0]}
    continuation = set(continuation_pieces(predictor.tokenizer).nonzero().flatten().tolist())
    assert len(every) == size and continuation and every - kept == continuation


def test_exclude_punctuation_reads_through_the_word_mark(family, predictor):
    tokenizer, size = predictor.tokenizer, len(predictor.tokenizer)
    kept = predictor.predict("Well [MASK]", top_k=size, exclude_punctuation=True).masks[0]
    words = {c.token_str.strip() for c in kept}
    assert not words & {".", ",", "!", "?", '"', "'", ";"}
    marked = [t for t in ("Ġ,", 'Ġ"', "▁.", "▁,") if t in tokenizer.get_vocab()]
    assert not {c.token for c in kept} & set(marked)
    if family in ("roberta", "modernbert"):
        assert marked  # the byte-level vocabulary has 'Ġ"': the test sees a marked punctuation piece


def test_filters_take_what_tokens_write_and_the_continuation_table():
    words = ["[PAD]", "[MASK]", "the", "ing", ",", ".", "—", "a1", None]  # "ing": a piece like "##ing"
    continuation = torch.tensor([False, False, False, True, False, False, False, False, False])
    keep = lambda **options: candidate_filter(words, {0, 1}, 10, **options).tolist()
    assert keep() == [True] * 8 + [False, False]  # never ids the tokenizer cannot write
    assert keep(special=True) == [False, False] + [True] * 6 + [False] * 2
    assert keep(punctuation=True) == [True, True, True, True, False, False, False, True, False, False]
    assert keep(continuation=continuation) == [True, True, True, False, True, True, True, True, False, False]


def test_the_spaces_around_masks_come_from_the_text():
    assert mask_spacing("The <mask> sat by<mask>.", "<mask>", 2) == ((True, True), (False, False))
    assert mask_spacing("<mask>", "<mask>", 1) == ((False, False),)


def test_the_helpers_and_joint_fill_work_with_every_family(family, predictor):
    model, tokenizer = predictor.backend.module.model, predictor.tokenizer
    for text in EXAMPLE_SENTENCES:  # written with [MASK]: the command line's closing demo
        (candidates,) = predict_top_k_masked_word(text, model, tokenizer, top_k=3)
        assert len(candidates) == 3 and candidates[0].probability >= candidates[2].probability
        assert predict_single_masked_word(text, model, tokenizer) == candidates[0].token
    one = predictor.fill("The capital of France is [MASK].", top_k=3, exclude_special=True)
    alone = predictor.predict("The capital of France is [MASK].", top_k=3, exclude_special=True).masks[0]
    assert [f.token_ids for f in one] == [(c.token_id,) for c in alone]
    assert [f.probability for f in one] == pytest.approx([c.probability for c in alone], rel=1e-4)
    assert [f.sequence for f in one] == [c.sequence for c in alone]
    (both,) = predictor.fill("The [MASK] sat by the [MASK].", top_k=1, beam_width=2, exclude_special=True)
    assert tokenizer.mask_token not in both.sequence and len(both.tokens) == len(both.token_ids) == 2
    assert both.sequence.startswith(written(family, "The")) and written(family, " sat by ") in both.sequence


def test_long_texts_are_windowed_within_the_positions_the_model_has(family):
    # A tokenizer that does not say how long a text may be: only the model's positions limit the window,
    # which for RoBERTa and XLM-R start after the padding id (130 positions, 128 usable).
    tokenizer = copy.deepcopy(family_tokenizer(family))
    tokenizer.model_max_length = int(1e30)
    predictor = Predictor(family_model(family), tokenizer)
    assert predictor.window == MAX_LENGTH - 2
    text = "the " * 400 + "[MASK]" + " the" * 400
    (far,) = predictor.predict(text, top_k=3).masks
    ids = tokenizer(text.replace("[MASK]", tokenizer.mask_token), add_special_tokens=False)["input_ids"]
    mask = ids.index(tokenizer.mask_token_id)
    window = [*predictor.prefix, *ids[mask - 63 : mask + 63], *predictor.suffix]  # centred on the mask
    assert len(ids) > 2 * MAX_LENGTH and len(window) == MAX_LENGTH
    with torch.no_grad():
        logits = predictor.backend.module.model(input_ids=torch.tensor([window])).logits[0, 1 + 63]
    expected = logits.softmax(-1).topk(3)
    assert [c.token_id for c in far] == expected.indices.tolist()
    assert [c.probability for c in far] == pytest.approx(expected.values.tolist(), abs=1e-5)


@pytest.fixture(scope="module")
def exported(family, tmp_path_factory):
    """The family's model saved, then exported by the command line: one export per family (~5 s)."""
    root = tmp_path_factory.mktemp(f"onnx-{family}")
    save_family(family, root / "model")
    assert main(["export", "--model", str(root / "model"), "--output", str(root / "onnx")]) == 0
    return root / "onnx"


def test_onnx_runtime_answers_as_pytorch(family, predictor, exported, capsys):
    pytest.importorskip("onnxruntime")
    onnx = Predictor.load(exported, batch_size=3)
    assert onnx.tokenizer.mask_token == predictor.tokenizer.mask_token and onnx.window == predictor.window
    texts = [*EXAMPLE_SENTENCES, "A [MASK] and a [MASK].", "the " * 300 + "[MASK]"]  # padding, a window
    for a, b in zip(onnx.predict(texts, top_k=5), predictor.predict(texts, top_k=5)):
        for ours, theirs in zip(a.masks, b.masks):
            assert [c.token_id for c in ours] == [c.token_id for c in theirs]
            assert [c.probability for c in ours] == pytest.approx([c.probability for c in theirs], abs=1e-4)
            assert [c.sequence for c in ours] == [c.sequence for c in theirs]
    a, b = (p.predict(texts[1], targets=["unearthly", "toast"]).masks[0] for p in (onnx, predictor))
    assert [c.probability for c in a] == pytest.approx([c.probability for c in b], rel=1e-4)
    capsys.readouterr()
    assert main(["predict", "--model", str(exported), "--json", "--top-k", "2", "The sky was [MASK]."]) == 0
    (answer,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [c["token_id"] for c in answer["masks"][0]] == [
        c.token_id for c in predictor.predict("The sky was [MASK].", top_k=2).masks[0]
    ]
