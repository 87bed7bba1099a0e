import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlm_helpers.config import ConfigError, make_config
from mlm_helpers.data.examples import cut_examples, encode_ids, make_examples
from mlm_helpers.data.sources import TextSource, iter_texts, open_stream, split_stream

from .conftest import sample_lines


@given(st.lists(st.lists(st.integers(10, 99), max_size=40), max_size=30), st.integers(3, 20))
def test_packing_makes_full_blocks_and_loses_no_token(token_lists, length):
    blocks = list(cut_examples(token_lists, length, "packed", cls_id=1, sep_id=2, drop_last=False))
    flat = [t for ids in token_lists for t in ids]
    assert [t for b in blocks for t in b[1:-1]] == flat
    assert all(b[0] == 1 and b[-1] == 2 for b in blocks)
    assert all(len(b) == length for b in blocks[:-1])
    full = list(cut_examples(token_lists, length, "packed", cls_id=1, sep_id=2))
    assert all(len(b) == length for b in full)
    assert len(full) == len(flat) // (length - 2)


def test_sentence_mode_keeps_one_example_per_row(tokenizer):
    texts = ["A short line.", "Another, slightly longer line of text, with many more words in it."]
    first = tokenizer(texts[0])["input_ids"]
    examples = list(make_examples(texts, tokenizer, length=len(first), packing="sentence"))
    assert len(examples) == 2
    assert examples[0] == first
    assert len(examples[1]) == len(first) and examples[1][-1] == tokenizer.sep_token_id
    assert examples[1][:-1] == tokenizer(texts[1])["input_ids"][: len(first) - 1]


def rows_of(path, **kwargs):
    source = TextSource("unused", data_files=(str(path),), **kwargs)
    return list(iter_texts(open_stream(source), source.text_column))


def test_local_formats_load_through_datasets(tmp_path):
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps({"body": f"line {i}"}) for i in range(3)))
    (tmp_path / "a.csv").write_text("id,text\n1,hello there\n2,good night\n")
    (tmp_path / "a.txt").write_text("first para\nstill first\n\nsecond para\n")
    assert rows_of(tmp_path / "a.jsonl", text_column="body") == ["line 0", "line 1", "line 2"]
    assert rows_of(tmp_path / "a.csv") == ["hello there", "good night"]
    assert rows_of(tmp_path / "a.txt") == ["first para", "still first", "second para"]
    assert rows_of(tmp_path / "a.txt", txt_unit="paragraph") == ["first para\nstill first", "second para"]
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["one", "two"]}), tmp_path / "a.parquet")
    assert rows_of(tmp_path / "a.parquet") == ["one", "two"]


def test_empty_corpus_and_unknown_column_are_clear_errors(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ConfigError, match="empty"):
        open_stream(TextSource("unused", data_files=(str(tmp_path / "empty.txt"),)))
    (tmp_path / "a.jsonl").write_text(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(ConfigError, match="'text' not found.*'body'.*--text-column"):
        open_stream(TextSource("unused", data_files=(str(tmp_path / "a.jsonl"),)))


def test_eval_rows_are_held_out(tmp_path):
    path = tmp_path / "lines.txt"
    path.write_text("\n".join(f"row {i}" for i in range(200)))
    held, train = split_stream(open_stream(TextSource("unused", data_files=(str(path),))), eval_size=20)
    assert list(iter_texts(held, "text")) == [f"row {i}" for i in range(20)]
    assert list(iter_texts(train, "text")) == [f"row {i}" for i in range(20, 200)]


def test_config_rejects_bad_values_with_the_flag_name(tmp_path):
    with pytest.raises(ConfigError, match="--mask-replace-prob.*--random-replace-prob.*above 1"):
        make_config(mask_replace_prob=0.8, random_replace_prob=0.3)
    with pytest.raises(ConfigError, match="Data file not found"):
        make_config(data_files=[str(tmp_path / "missing.txt")])
    (tmp_path / "x.docx").write_text("x")
    with pytest.raises(ConfigError, match="Cannot read"):
        make_config(data_files=[str(tmp_path / "x.docx")])
    with pytest.raises(ConfigError, match="--batch-size"):
        make_config(batch_size=0)
    with pytest.raises(ConfigError, match="Unknown model"):
        make_config(model="scratch:huge")
    with pytest.raises(ConfigError, match="Unknown setting"):
        make_config(epochs=3)
    quick = make_config("quick", max_steps=5)
    assert quick.max_steps == 5 and quick.is_scratch and quick.data_files


def test_held_out_rows_never_reach_training_with_several_shards(tmp_path):
    files = []
    for shard in range(3):
        files.append(tmp_path / f"shard{shard}.txt")
        files[-1].write_text("\n".join(f"s{shard} row {i}" for i in range(40)))
    stream = open_stream(TextSource("unused", data_files=tuple(map(str, files))))
    held, train = split_stream(stream, eval_size=15)
    held_rows = set(iter_texts(held, "text"))
    assert len(held_rows) == 15
    for epoch in range(2):
        train.set_epoch(epoch)
        rows = list(iter_texts(train, "text"))
        assert len(rows) == 105 and not held_rows & set(rows)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(extra=st.lists(st.text(min_size=1, max_size=80), max_size=8))
def test_encode_ids_gives_the_tokenizer_calls_ids(tokenizer, extra):
    texts = sample_lines(40) + ["Ünïcödé café, naïve — ok?", "a" * 600] + extra
    assert encode_ids(texts, tokenizer) == tokenizer(texts, add_special_tokens=False)["input_ids"]


def test_encode_ids_does_not_inherit_truncation_from_an_earlier_call(tokenizer):
    long_text = " ".join(sample_lines(30))
    tokenizer([long_text], truncation=True, max_length=8)  # leaves truncation on in the backend
    assert (
        len(encode_ids([long_text], tokenizer)[0])
        == len(tokenizer(long_text, add_special_tokens=False)["input_ids"])
        > 8
    )


def test_folders_and_quoted_patterns_stand_for_their_files(tmp_path):
    for name in ("b.txt", "a.txt", "notes.md"):
        (tmp_path / name).write_text("Some words.\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.txt").write_text("More words.\n")
    expected = [str(tmp_path / "a.txt"), str(tmp_path / "b.txt")]
    assert make_config(data_files=[str(tmp_path)]).data_files == expected  # its files of our types
    assert make_config(data_files=[str(tmp_path / "*.txt")]).data_files == expected
    assert make_config(data_files=[str(tmp_path / "**" / "*.txt")]).data_files[-1] == str(
        tmp_path / "sub" / "c.txt"
    )
    with pytest.raises(ConfigError, match="matches no file"):
        make_config(data_files=[str(tmp_path / "*.csv")])
    (tmp_path / "rows.csv").write_text("text\nA row.\n")
    with pytest.raises(ConfigError, match=r"mixes file types \(\.csv, \.txt\)"):
        make_config(data_files=[str(tmp_path)])


def test_text_that_is_not_utf8_or_not_json_lines_is_named_with_its_place(tmp_path):
    good = "A plain line of text.\n" * 60_000  # 1.3 MB: the bad byte lies past the first block read
    latin = tmp_path / "latin.txt"
    latin.write_bytes(good.encode() + "Caf\u00e9 au lait.\n".encode("latin-1"))
    with pytest.raises(
        ConfigError, match=rf"latin.txt is not UTF-8: byte {len(good) + 3:,} \(line 60,001\) is 0xe9.*iconv"
    ):
        open_stream(TextSource("local", data_files=(str(latin),)))
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"text": "one"}\n{"text": "two"}\n{"text": "thr\n{"text": "four"}\n')
    with pytest.raises(ConfigError, match=r"rows.jsonl, line 3: not valid JSON"):
        open_stream(TextSource("local", data_files=(str(rows),)))
    rows.write_text('{"text": "one"}\n["a list"]\n')
    with pytest.raises(ConfigError, match=r"line 2: a JSON list, not an object"):
        open_stream(TextSource("local", data_files=(str(rows),)))
