"""Where the text comes from: rows of a `datasets` stream, and the held-out split.

Everything is read through the `datasets` library as a stream: BookCorpus from the Hub, any other Hub
text dataset, or local .txt/.jsonl/.csv/.parquet files. Streams have no length and no validation
split, so the first `eval_size` rows are held out for evaluation and training skips them. The rows
become examples in examples.py, and the training rows an endless, resumable stream in stream.py.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.compute as pc

from ..config import BOOKCORPUS, BOOKCORPUS_REVISIONS, DATA_FILE_LOADERS, ConfigError, TrainConfig
from ..hub import require_hub


@dataclass(frozen=True)
class TextSource:
    """Where the text comes from: a Hub dataset, or local files."""

    dataset: str
    dataset_config: str | None = None
    dataset_revision: str | None = None
    split: str = "train"
    text_column: str = "text"
    data_files: tuple[str, ...] | None = None
    txt_unit: str = "line"

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> TextSource:
        files = tuple(cfg.data_files) if cfg.data_files else None
        return cls(
            cfg.dataset,
            cfg.dataset_config,
            cfg.dataset_revision,
            cfg.split,
            cfg.text_column,
            files,
            cfg.txt_unit,
        )

    def describe(self) -> str:
        if self.data_files:
            names = ", ".join(Path(f).name for f in self.data_files[:3])
            more = f" and {len(self.data_files) - 3} more" if len(self.data_files) > 3 else ""
            return f"local files {names}{more}"
        return f"{self.dataset} ({self.split})"


def open_stream(source: TextSource) -> datasets.IterableDataset:
    """Open the source as a `datasets` stream of rows and check that it holds text.

    Raises ConfigError for an empty source or a missing text column, and HubUnreachableError when a
    Hub dataset is asked for without a network.
    """
    if source.data_files:
        suffix = Path(source.data_files[0]).suffix.lower()
        loader = DATA_FILE_LOADERS[suffix]
        if loader in ("text", "json", "csv"):
            for path in source.data_files:
                check_text_file(Path(path), json_lines=suffix == ".jsonl")
        extra = {"sample_by": source.txt_unit} if loader == "text" else {}
        stream = datasets.load_dataset(
            loader, data_files=list(source.data_files), split="train", streaming=True, **extra
        )
    else:
        stream = _open_hub_stream(source)
    first = next(iter(stream), None)
    if first is None:
        raise ConfigError(f"The corpus is empty: {source.describe()} holds no rows.")
    if source.text_column not in first:
        raise ConfigError(
            f"Column {source.text_column!r} not found in {source.describe()}; it has "
            f"{', '.join(map(repr, first))}. Choose one with --text-column."
        )
    return stream


def check_text_file(path: Path, json_lines: bool = False) -> None:
    """Read a local text file once through: it must be UTF-8 and, for .jsonl, one JSON object a line.
    Otherwise ConfigError names the file, the line and the byte, before any training: `datasets` would
    raise from deep inside, and only when its reader reached the spot, mid-training for a large file.
    Reading is in blocks: about 1 GB/s for the UTF-8 check here; .jsonl lines are parsed too, about
    50 MB/s for lines of 80 bytes (both measured on our 2-core machine while it ran other work)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    line_number, offset, pending = 1, 0, ""
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            carried = len(decoder.getstate()[0])  # the start of a character cut by the last block
            try:
                text = decoder.decode(block)
            except UnicodeDecodeError as error:
                at = offset - carried + error.start
                line = line_number + error.object[: error.start].count(b"\n")
                raise ConfigError(
                    f"{path} is not UTF-8: byte {at:,} (line {line:,}) is 0x{error.object[error.start]:02x}. "
                    f"Re-encode it, e.g. iconv -f latin1 -t utf-8 {path} > {path.stem}.utf8{path.suffix}"
                ) from None
            if json_lines:
                *complete, pending = (pending + text).split("\n")
                for number, line in enumerate(complete, start=line_number):
                    _check_json_line(path, number, line)
            line_number += block.count(b"\n")
            offset += len(block)
    if decoder.getstate()[0]:  # the file ends inside a character
        raise ConfigError(f"{path} is not UTF-8: it ends in the middle of a character (byte {offset:,}).")
    if json_lines and pending:
        _check_json_line(path, line_number, pending)


def _check_json_line(path: Path, number: int, line: str) -> None:
    if not line.strip():
        return
    try:
        value = json.loads(line)
    except ValueError as error:
        raise ConfigError(
            f"{path}, line {number:,}: not valid JSON ({error}). Fix or remove that line."
        ) from None
    if not isinstance(value, dict):
        raise ConfigError(
            f"{path}, line {number:,}: a JSON {type(value).__name__}, not an object with a text field."
        )


def _open_hub_stream(source: TextSource) -> datasets.IterableDataset:
    require_hub(f"the dataset {source.dataset!r}")
    if source.dataset_revision:
        revisions: tuple[str | None, ...] = (source.dataset_revision,)
    elif source.dataset == BOOKCORPUS:
        revisions = BOOKCORPUS_REVISIONS
    else:
        revisions = (None,)
    failures = []
    for revision in revisions:
        kwargs = {}
        if revision == "refs/convert/parquet":
            # The export keeps each configuration's files under a folder named after it.
            kwargs["data_dir"] = source.dataset_config or "default"
        else:
            kwargs["name"] = source.dataset_config
        try:
            return datasets.load_dataset(
                source.dataset, split=source.split, streaming=True, revision=revision, **kwargs
            )
        except Exception as error:  # noqa: BLE001 - each revision may fail its own way; all are reported
            failures.append(f"revision {revision or 'default'}: {type(error).__name__}: {error}")
    raise ConfigError(
        f"Could not open the dataset {source.dataset!r} (split {source.split!r}):\n  "
        + "\n  ".join(failures)
        + "\nCheck --dataset, --dataset-config, --dataset-revision and --split, or use --data-files."
    )


def split_stream(
    stream: datasets.IterableDataset, eval_size: int, text_column: str = "text"
) -> tuple[list[dict], datasets.IterableDataset]:
    """Hold out the first `eval_size` rows: returns (evaluation rows, read once, and training rows).

    Training gets every row whose text is not one of the held-out texts (so a repeated sentence is not
    scored on text it was trained on). We filter by text rather than `skip(eval_size)`: once the rows
    are split between processes by whole files, `datasets` spreads a `skip(n)` over the files instead of
    skipping the first n rows, and held-out rows would reach training (seen with 3 files, 3 processes).
    """
    held_out = list(stream.take(eval_size))
    if eval_size == 0:
        return held_out, stream
    texts = frozenset(row[text_column] for row in held_out if isinstance(row[text_column], str))
    # On Arrow tables, a thousand rows at a time: the training stream reads its rows as tables too
    # (ExampleStream), and over 29,000 lines this filter costs 0.03 s where a Python one per row
    # costs 0.17 s, on top of the 0.06 s `datasets` takes to make the rows Python dicts.
    rows = stream.with_format("arrow").filter(NotIn(texts, text_column), batched=True)
    return held_out, rows.with_format(None)


class NotIn:
    """A filter of Arrow tables keeping the rows whose text is outside a set; a class, not a lambda, so
    that DataLoader workers started by "spawn" (macOS, Windows) can pickle the stream."""

    def __init__(self, texts: frozenset[str], text_column: str) -> None:
        self.texts, self.text_column = pa.array(sorted(texts), pa.string()), text_column

    def __call__(self, table: pa.Table) -> pa.Array:
        column = table[self.text_column]
        if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
            return pa.array([True] * len(table))  # kept: clean_texts says the column holds no text
        held_out = pc.is_in(column, value_set=self.texts.cast(column.type))
        return pc.invert(pc.fill_null(held_out, False))


def iter_texts(rows: Iterable[dict], text_column: str) -> Iterator[str]:
    """The non-blank texts of a stream of rows, stripped."""
    return clean_texts((row[text_column] for row in rows), text_column)


def clean_texts(values: Iterable, text_column: str) -> Iterator[str]:
    """The non-blank texts among a column's values, stripped; ConfigError for values that are not text."""
    for text in values:
        if text is None:
            continue
        if not isinstance(text, str):
            raise ConfigError(
                f"Column {text_column!r} holds {type(text).__name__} values, not text: "
                "choose the text column with --text-column."
            )
        text = text.strip()
        if text:
            yield text
