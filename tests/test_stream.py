import json

import pytest

from mlm_helpers.config import ConfigError
from mlm_helpers.data.examples import make_examples, split_word_marks
from mlm_helpers.data.sources import TextSource, iter_texts, open_stream, split_stream
from mlm_helpers.data.stream import STATE_VERSION, ExampleStream


def rows(path, eval_size=0):
    return split_stream(open_stream(TextSource("unused", data_files=(str(path),))), eval_size)[1]


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    words = "the hens were fed at dawn while the dog slept by the warm kitchen fire".split()
    path.write_text("\n".join(" ".join(words[i % 7 : i % 7 + 3 + i % 5]) + f" {i}" for i in range(300)))
    return path


def take(iterator, n):
    return [next(iterator) for _ in range(n)]


@pytest.mark.parametrize("packing", ["packed", "sentence"])
@pytest.mark.parametrize("stop", [1, 37, 130, 333])  # 333 lies in the third pass over the text
def test_a_resumed_stream_continues_exactly(corpus, tokenizer, packing, stop):
    def make():
        return ExampleStream(rows(corpus, 10), "text", tokenizer, length=16, packing=packing,
                             shuffle_buffer=50, seed=3)  # fmt: skip

    expected = take(iter(make()), 400)
    first = make()
    head = take(iter(first), stop)
    saved = json.loads(json.dumps(first.state_dict()))  # it must survive a trip through JSON
    assert saved["position"] == stop
    resumed = make()  # a new process would build everything anew
    resumed.load_state_dict(saved)
    assert head + take(iter(resumed), 400 - stop) == expected


def test_each_pass_reads_every_row_once_in_a_seeded_order(corpus, tokenizer):
    def first_pass(seed):
        stream = ExampleStream(rows(corpus), "text", tokenizer, length=64, packing="sentence",
                               shuffle_buffer=40, seed=seed)  # fmt: skip
        return take(iter(stream), 300), stream

    order, stream = first_pass(0)
    assert stream.state["epoch"] == 0
    lines = corpus.read_text().splitlines()
    expected = sorted(tokenizer(line)["input_ids"] for line in lines)
    assert sorted(order) == expected  # every row exactly once
    assert order != [tokenizer(line)["input_ids"] for line in lines]  # but shuffled
    assert first_pass(0)[0] == order and first_pass(1)[0] != order
    second = take(iter(stream), 300)
    assert sorted(second) == expected and second != order  # the next pass reshuffles


def test_too_little_text_is_a_clear_error(tmp_path, tokenizer):
    path = tmp_path / "small.txt"
    path.write_text("The hens were fed at dawn.\nThe dog slept by the fire.\n")
    stream = ExampleStream(rows(path), "text", tokenizer, length=500)
    with pytest.raises(ConfigError, match="does not fill one example"):
        next(iter(stream))
    packed = ExampleStream(rows(path), "text", tokenizer, length=8)
    assert all(len(block) == 8 for block in take(iter(packed), 10))  # small text is read again


@pytest.mark.parametrize("packing", ["packed", "sentence"])
def test_unshuffled_stream_cuts_the_same_examples_as_make_examples(corpus, tokenizer, packing):
    # The held-out examples come from make_examples, training examples from the stream: one cut.
    stream = ExampleStream(rows(corpus), "text", tokenizer, length=16, packing=packing, shuffle_buffer=1)
    texts = list(iter_texts(rows(corpus), "text"))
    expected = list(make_examples(texts, tokenizer, 16, packing))
    if packing == "packed":
        assert len(expected) > 100 and {len(e) for e in expected} == {16}
    else:
        assert len(expected) == len(texts) == 300 and max(len(e) for e in expected) <= 16
    assert take(iter(stream), len(expected)) == expected


@pytest.mark.parametrize("packing", ["packed", "sentence"])
def test_a_whole_word_stream_cuts_the_same_examples_and_resumes_exactly(corpus, tokenizer, packing):
    # Word marks ride in the ids (~id for a piece that continues a word): the same cut as without
    # them, the same ids once the marks are read, and a JSON-able state that resumes exactly.
    def make(word_marks=True):
        return ExampleStream(rows(corpus, 10), "text", tokenizer, length=16, packing=packing,
                             shuffle_buffer=50, seed=3, word_marks=word_marks)  # fmt: skip

    expected = take(iter(make()), 200)
    assert [split_word_marks(e)[0] for e in expected] == take(iter(make(word_marks=False)), 200)
    assert any(i < 0 for e in expected for i in e)
    first = make()
    head = take(iter(first), 77)
    saved = json.loads(json.dumps(first.state_dict()))
    waiting = saved["carry"] + [i for ids in saved["pending"] for i in ids]
    assert saved["version"] == STATE_VERSION and any(i < 0 for i in waiting)
    resumed = make()
    resumed.load_state_dict(saved)
    assert head + take(iter(resumed), 200 - 77) == expected
    texts = list(iter_texts(rows(corpus), "text"))
    unshuffled = ExampleStream(rows(corpus), "text", tokenizer, length=16, packing=packing, shuffle_buffer=1,
                               word_marks=True)  # fmt: skip
    examples = list(make_examples(texts, tokenizer, 16, packing, word_marks=True))
    assert take(iter(unshuffled), len(examples)) == examples
