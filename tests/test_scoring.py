"""Predictor.score (pseudo-log-likelihood, both variants) against a plain loop over the model, windows,
ONNX Runtime, the errors it documents, and the score and predict --input/--output commands."""

import io
import itertools
import json
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlm_helpers import PredictionError, Predictor, SentenceScore
from mlm_helpers.predict.batch_files import answer_chunks
from mlm_helpers.predict.scoring import masked_copy

from .conftest import sample_lines, tiny_bert
from .families import family_model, family_tokenizer, save_family
from .test_cli import run_in_process
from .test_word_boundaries import WhitespaceTokenizer

TEXTS = [
    "The lighthouse keeper wrote unearthly letters to the harbourmaster.",
    "Rain fell.",
    "She poured herself a cup of tea and sat by the window, humming.",
]


@pytest.fixture(scope="module", params=["bert", "roberta", "xlm-roberta"])
def family(request):
    model, tokenizer = family_model(request.param), family_tokenizer(request.param)
    return model, tokenizer, Predictor(model, tokenizer, device="cpu", cache_size=0)


def direct_scores(model, tokenizer, text: str, variant: str) -> list[float]:
    """The log-probability of each non-special token, each read from its own copy of the text with it
    masked (word-l2r: with the rest of its word to the right too), through the plain full model."""
    encoding = tokenizer(text)
    ids, words = encoding["input_ids"], encoding.word_ids()
    scored = [p for p, token in enumerate(ids) if token not in set(tokenizer.all_special_ids)]
    copies = []
    for position in scored:
        copy = list(ids)
        copy[position] = tokenizer.mask_token_id
        later = position + 1
        while variant == "word-l2r" and later < len(ids) and words[later] == words[position] is not None:
            copy[later] = tokenizer.mask_token_id
            later += 1
        copies.append(copy)
    with torch.no_grad():  # one plain call for all copies: each row has its own position masked
        logprobs = model(input_ids=torch.tensor(copies)).logits.log_softmax(-1)
    return [logprobs[n, p, ids[p]].item() for n, p in enumerate(scored)]


@pytest.mark.parametrize("variant", ["word-l2r", "original"])
def test_score_equals_one_masked_copy_at_a_time(family, variant):
    model, tokenizer, predictor = family
    results = predictor.score(TEXTS, variant=variant, batch_size=7)  # batches across texts
    for text, result in zip(TEXTS, results):
        expected = direct_scores(model, tokenizer, text, variant)
        assert [t.logprob for t in result.tokens] == pytest.approx(expected, abs=1e-5)
        assert result.token_count == len(expected) and result.pll == pytest.approx(sum(expected), abs=1e-4)
        assert result.pppl == pytest.approx(math.exp(-result.pll / result.token_count))
        assert result.variant == variant and result.text == text
    alone = predictor.score(TEXTS[1], variant=variant)
    assert isinstance(alone, SentenceScore) and alone.pll == pytest.approx(results[1].pll, abs=1e-5)


def test_word_l2r_differs_from_original_exactly_on_multi_piece_words(family):
    _, tokenizer, predictor = family
    text = TEXTS[0]
    l2r, original = predictor.score(text), predictor.score(text, variant="original")
    encoding = tokenizer(text, add_special_tokens=False)
    words = encoding.word_ids()
    assert [t.token_id for t in l2r.tokens] == encoding["input_ids"]  # no special token scored
    assert not set(tokenizer.all_special_ids) & {t.token_id for t in l2r.tokens}
    multi = 0
    for i, (a, b) in enumerate(zip(l2r.tokens, original.tokens)):
        if i + 1 < len(words) and words[i + 1] == words[i]:  # a piece with more of its word to its right
            assert abs(a.logprob - b.logprob) > 1e-6
            multi += 1
        else:
            assert a.logprob == pytest.approx(b.logprob, abs=1e-5)
    assert multi >= 1  # "unearthly" has several pieces in every tiny vocabulary


def test_masked_copy_masks_the_rest_of_the_word_only():
    assert masked_copy([5, 6, 7, 8], 1, [0, 1, 1, 2], 4) == [5, 4, 4, 8]
    assert masked_copy([5, 6, 7, 8], 2, [0, 1, 1, 2], 4) == [5, 6, 4, 8]  # pieces to the left stay
    assert masked_copy([5, 6, 7, 8], 1, None, 4) == [5, 4, 7, 8]  # original
    assert masked_copy([5, 6, 7], 0, [None, None, 0], 4) == [4, 6, 7]


def test_a_long_text_is_scored_in_windows_not_cut(family):
    model, tokenizer, predictor = family
    text = " ".join(["The rain fell on the old stone bridge."] * 15)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) > predictor.window
    result = predictor.score(text, variant="original", batch_size=64)
    assert result.token_count == len(ids)
    prefix, suffix = predictor.prefix, predictor.suffix
    for position in (0, len(ids) // 2, len(ids) - 1):  # at the start, the middle and the end
        start = min(max(position - predictor.window // 2, 0), len(ids) - predictor.window)
        window = list(ids[start : start + predictor.window])
        window[position - start] = tokenizer.mask_token_id
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prefix + window + suffix])).logits
        expected = logits.log_softmax(-1)[0, len(prefix) + position - start, ids[position]].item()
        assert result.tokens[position].logprob == pytest.approx(expected, abs=1e-5)


def test_onnx_runtime_scores_as_pytorch(tmp_path):
    pytest.importorskip("onnxruntime")
    from mlm_helpers.predict.onnx_backend import export_onnx

    model, tokenizer = family_model("bert"), family_tokenizer("bert")
    export_onnx(model, tokenizer, tmp_path / "onnx")
    onnx, pytorch = Predictor.load(tmp_path / "onnx"), Predictor(model, tokenizer, device="cpu")
    for variant in ("word-l2r", "original"):
        for ours, theirs in zip(onnx.score(TEXTS, variant=variant), pytorch.score(TEXTS, variant=variant)):
            assert [t.token_id for t in ours.tokens] == [t.token_id for t in theirs.tokens]
            assert [t.logprob for t in ours.tokens] == pytest.approx(
                [t.logprob for t in theirs.tokens], abs=1e-4
            )


def test_bad_input_raises_the_documented_errors(family):
    _, _, predictor = family
    for bad, error, fragment in (
        ("", PredictionError, "empty"),
        ("   ", PredictionError, "empty"),
        ([], PredictionError, "No texts"),
        (["fine", 3], TypeError, "Text 1"),
        (3, TypeError, "string"),
        (predictor.tokenizer.sep_token, PredictionError, "no token to score"),
        (["fine", ""], PredictionError, "Text 1 of the batch"),
    ):
        with pytest.raises(error, match=fragment):
            predictor.score(bad)
    with pytest.raises(PredictionError, match="variant"):
        predictor.score("fine", variant="left")
    with pytest.raises(PredictionError, match="batch_size"):
        predictor.score("fine", batch_size=0)


def test_a_slow_tokenizer_is_refused_for_word_l2r_and_serves_original():
    slow = WhitespaceTokenizer(sorted({word for line in sample_lines(300) for word in line.split()}))
    assert not slow.is_fast
    model = tiny_bert(len(slow))
    predictor = Predictor(model, slow, device="cpu")
    with pytest.raises(PredictionError, match="fast tokenizer"):
        predictor.score("the rain fell")
    result = predictor.score("the rain fell", variant="original")
    ids = slow("the rain fell")["input_ids"]
    copies = [ids[:p] + [slow.mask_token_id] + ids[p + 1 :] for p in range(1, len(ids) - 1)]
    with torch.no_grad():
        logprobs = model(input_ids=torch.tensor(copies)).logits.log_softmax(-1)
    expected = [logprobs[n, n + 1, ids[n + 1]].item() for n in range(len(copies))]
    assert [t.logprob for t in result.tokens] == pytest.approx(expected, abs=1e-5)


WORDS = ["the", "dog", ",", ".", "unearthly", "é", "🙂", "[SEP]", "[CLS]", "[PAD]", "[MASK]", "<mask>", "<s>"]
anything = st.one_of(st.integers(), st.none(), st.floats(), st.binary())
text = st.builds(
    lambda words, repeat: " ".join(words) * repeat,
    st.lists(st.one_of(st.sampled_from(WORDS), st.text(max_size=5)), max_size=8),
    st.sampled_from([1, 1, 1, 30]),
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(text, st.lists(st.one_of(text, anything), max_size=3), anything),
    st.sampled_from(["word-l2r", "original", "other"]),
    st.one_of(st.sampled_from([-1, 0, 16, 64, 2**21]), anything),
)
def test_score_answers_any_text_or_says_why(text, variant, batch_size):
    predictor = _hypothesis_predictor()
    try:
        results = predictor.score(text, variant=variant, batch_size=batch_size)
    except (PredictionError, TypeError) as error:
        assert str(error)
        return
    for result in results if isinstance(results, list) else [results]:
        assert result.token_count == len(result.tokens) >= 1
        assert all(t.logprob <= 0 for t in result.tokens) and result.pppl >= 1


def _hypothesis_predictor():  # hypothesis refuses function-scoped fixtures: one predictor, built once
    global _PREDICTOR
    if "_PREDICTOR" not in globals():
        _PREDICTOR = Predictor(
            family_model("roberta"), family_tokenizer("roberta"), device="cpu", cache_size=0
        )
    return _PREDICTOR


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_family("bert", tmp_path_factory.mktemp("score") / "model")


def test_score_command_prints_and_streams_with_error_records(folder, tmp_path, capsys):
    shown = run_in_process(capsys, "score", "--model", str(folder), "Rain fell.", "The dog sat.")
    assert shown.returncode == 0, shown.stderr
    assert [line.split("\t")[-1] for line in shown.stdout.splitlines()] == ["Rain fell.", "The dog sat."]
    lines = ["Rain fell."] * 260 + ["[SEP]"] + ["The dog sat by the window."] * 19  # a bad line in chunk 2
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n")
    out = tmp_path / "scores.jsonl"
    result = run_in_process(capsys, "score", "--model", str(folder), "--input", str(tmp_path / "in.txt"),
                            "--output", str(out), "--variant", "original")  # fmt: skip
    assert result.returncode == 1 and "1 text(s) failed" in result.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 280 and records[260] == {"line": 261, "error": records[260]["error"]}
    assert "no token to score" in records[260]["error"] and "Text 0" not in records[260]["error"]
    assert [r["text"] for r in records[:260] + records[261:]] == lines[:260] + lines[261:]  # input order
    direct = Predictor.load(folder, device="cpu").score("The dog sat by the window.", variant="original")
    assert records[-1]["pll"] == pytest.approx(direct.pll, abs=1e-5) and records[-1]["variant"] == "original"
    (tmp_path / "in.jsonl").write_text('{"text": "Rain fell."}\nnot json\n{"body": 1}\n')
    piped = run_in_process(
        capsys, "score", "--model", str(folder), "--json", "--input", str(tmp_path / "in.jsonl")
    )
    rows = [json.loads(line) for line in piped.stdout.splitlines()]
    assert piped.returncode == 1 and [r.get("line") for r in rows] == [None, 2, 3]
    assert rows[0]["token_count"] == len(rows[0]["tokens"])


def test_predict_streams_a_file_with_error_records(folder, tmp_path, capsys):
    (tmp_path / "in.txt").write_text("The [MASK] sat.\nno mask here\n\nA [MASK] ran.\n")
    files = ("--input", str(tmp_path / "in.txt"), "--output", str(tmp_path / "out.jsonl"))
    result = run_in_process(capsys, "predict", "--model", str(folder), "--top-k", "2", *files)
    assert result.returncode == 1 and "1 text(s) failed" in result.stderr
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r.get("text") for r in records] == ["The [MASK] sat.", None, "A [MASK] ran."]
    assert records[1]["line"] == 2 and "[MASK]" in records[1]["error"]
    printed = run_in_process(
        capsys, "predict", "--model", str(folder), "--top-k", "2", "--json", "The [MASK] sat."
    )
    assert json.loads(printed.stdout) == records[0]  # the records --json prints
    for flags in (("--top-k", "0"), ("--target", "")):  # wrong for every line: refused before any
        refused = run_in_process(capsys, "predict", "--model", str(folder), *flags, *files)
        assert refused.returncode == 2 and "error: " in refused.stderr
    refused = run_in_process(capsys, "score", "--model", str(folder), "--batch-size", "0", "Rain fell.")
    assert refused.returncode == 2 and "--batch-size" in refused.stderr
    fine = run_in_process(
        capsys, "predict", "--model", str(folder), "--input", str(tmp_path / "in.txt"), "--joint"
    )
    assert fine.returncode == 1 and "fillings" in fine.stdout.splitlines()[0]


def test_files_are_answered_in_chunks_never_read_whole():
    calls = []

    def answer(texts):
        calls.append(len(texts))
        if "bad" in texts:
            raise PredictionError(f"Text {texts.index('bad')} of the batch: bad text")
        return [{"text": text} for text in texts]

    endless = ((n, "bad" if n % 1000 == 7 else f"text {n}") for n in itertools.count(1))
    records = list(itertools.islice(answer_chunks(endless, answer, chunk_lines=256), 600))
    assert calls[0] == 256 and len(calls) < 30  # an endless input, answered a chunk at a time
    assert records[6] == {"line": 7, "error": "Bad text"}  # the line's number, not the batch's index
    assert [r["text"] for r in records[:6] + records[7:]] == [f"text {n}" for n in range(1, 601) if n != 7]


def test_score_reads_standard_input(folder, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("Rain fell.\n\n[SEP]\nThe dog sat.\n"))
    result = run_in_process(capsys, "score", "--model", str(folder), "-")
    assert result.returncode == 1
    assert [line.split("\t")[-1] for line in result.stdout.splitlines()] == ["Rain fell.", "The dog sat."]
    assert "error: line 3: " in result.stderr and "1 text(s) failed" in result.stderr
