"""Text source -> tokenized examples or packed blocks. No masking happens here.

Everything is read through the `datasets` library as a stream: BookCorpus from the Hub, any other Hub
text dataset, or local .txt/.jsonl/.csv/.parquet files. Streams have no length and no validation
split, so the first `eval_size` rows are held out for evaluation and training skips them. The
training rows become an endless, resumable example stream in stream.py.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import datasets

from .config import BOOKCORPUS, BOOKCORPUS_REVISIONS, DATA_FILE_LOADERS, ConfigError, TrainConfig
from .hub import require_hub

TOKENIZE_CHUNK = 256  # rows per call of the fast tokenizer: large enough to amortise the call


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
    return held_out, stream.filter(NotIn(texts), input_columns=text_column)


class NotIn:
    """A row filter keeping texts outside a set; a class, not a lambda, so that DataLoader workers
    started by "spawn" (macOS, Windows) can pickle the stream."""

    def __init__(self, texts: frozenset[str]) -> None:
        self.texts = texts

    def __call__(self, text) -> bool:
        return not (isinstance(text, str) and text in self.texts)


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


def encode_ids(texts: list[str], tokenizer) -> list[list[int]]:
    """The token ids of each text, without special tokens, in one call.

    A fast tokenizer's own `encode_batch_fast` (tokenizers 0.21+, no offsets computed) gives the same ids
    as calling the transformers tokenizer, without building an Encoding object per text and converting
    it: on the 128-token training stream that wrapper took a quarter of the data pipeline's time.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    # Only while the backend neither truncates nor pads: the transformers wrapper switches both per
    # call, and an earlier call with truncation=True leaves truncation switched on in the backend.
    plain = backend is not None and backend.truncation is None and backend.padding is None
    if plain and hasattr(backend, "encode_batch_fast"):
        return [encoding.ids for encoding in backend.encode_batch_fast(texts, add_special_tokens=False)]
    return tokenizer(texts, add_special_tokens=False, return_attention_mask=False)["input_ids"]


def tokenize_texts(texts: Iterable[str], tokenizer) -> Iterator[list[int]]:
    """Token ids of each text, without special tokens, tokenized in chunks for speed."""
    iterator = iter(texts)
    while chunk := list(islice(iterator, TOKENIZE_CHUNK)):
        yield from encode_ids(chunk, tokenizer)


def next_example(
    pending: list[list[int]], carry: list[int], length: int, packing: str, cls_id: int, sep_id: int
) -> list[int] | None:
    """The next example of at most `length` ids, [CLS] ... [SEP], or None when more text is needed.

    `pending` (token lists not yet used, oldest first) and `carry` (packed ids not yet in a block) are
    consumed in place. This is the one place examples are cut: the resumable training stream calls it
    with its saved state, `make_examples` with a fresh one. "packed" cuts the running text into blocks
    of exactly `length` ids: no padding, which is where packing saves its compute (BookCorpus rows
    average about 13 words; padding each to 512 would spend over 95% of the work on padding).
    "sentence" keeps one row per example and cuts rows longer than `length`.
    """
    body = length - 2
    if packing == "sentence":
        if not pending:
            return None
        ids = pending.pop(0)[:body]
    else:
        while len(carry) < body and pending:
            carry.extend(pending.pop(0))
        if len(carry) < body:
            return None
        ids = carry[:body]
        del carry[:body]
    return [cls_id, *ids, sep_id]


def cut_examples(
    token_lists: Iterable[list[int]],
    length: int,
    packing: str,
    cls_id: int,
    sep_id: int,
    drop_last: bool = True,
) -> Iterator[list[int]]:
    """Token lists -> examples with `next_example`; a packed tail too short for a block is dropped, or
    yielded short when `drop_last` is False.

    >>> list(cut_examples([[5, 6, 7], [8, 9]], length=4, packing="packed", cls_id=1, sep_id=2))
    [[1, 5, 6, 2], [1, 7, 8, 2]]
    """
    pending: list[list[int]] = []
    carry: list[int] = []
    for ids in token_lists:
        pending.append(ids)
        while (example := next_example(pending, carry, length, packing, cls_id, sep_id)) is not None:
            yield example
    if carry and not drop_last:
        yield [cls_id, *carry, sep_id]


def pack_blocks(
    token_lists: Iterable[list[int]], length: int, cls_id: int, sep_id: int, drop_last: bool = True
) -> Iterator[list[int]]:
    """Concatenate token lists and cut them into blocks of exactly `length` ids, [CLS] ... [SEP].

    >>> list(pack_blocks([[5, 6, 7], [8, 9]], length=4, cls_id=1, sep_id=2))
    [[1, 5, 6, 2], [1, 7, 8, 2]]
    """
    return cut_examples(token_lists, length, "packed", cls_id, sep_id, drop_last)


def sentence_examples(
    token_lists: Iterable[list[int]], length: int, cls_id: int, sep_id: int
) -> Iterator[list[int]]:
    """One example per row, [CLS] ... [SEP], cut to `length` ids (rows longer than that lose their end)."""
    return cut_examples(token_lists, length, "sentence", cls_id, sep_id)


def make_examples(
    texts: Iterable[str], tokenizer, length: int, packing: str, drop_last: bool = True
) -> Iterator[list[int]]:
    """Texts -> token-id examples, packed into blocks or one per row."""
    token_lists = tokenize_texts(texts, tokenizer)
    return cut_examples(
        token_lists, length, packing, tokenizer.cls_token_id, tokenizer.sep_token_id, drop_last
    )
