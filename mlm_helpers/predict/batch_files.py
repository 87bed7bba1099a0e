"""Answering a file of texts, line by line, in chunks: what `predict` and `score` do with --input/--output.

A file of 100,000 lines never sits in memory: `CHUNK_LINES` lines are read, answered in one call (which
groups them by length), written in input order, and let go. A line that fails becomes an error record
naming its line number, ``{"line": 17, "error": "..."}``, and the others go on; the caller turns the
count of failures into an exit code. A .jsonl input holds one record per line with a "text" field; any
other file (or standard input) holds one text per line. Blank lines are skipped, and counted.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TextIO

from ..fileio import write_file_atomic
from .inputs import PredictionError

CHUNK_LINES = 256  # texts answered per call: enough to fill batches, few enough to hold in memory

Answer = Callable[[list[str]], list[dict]]  # texts -> one JSON record per text, in order


def numbered_texts(lines: Iterable[str], jsonl: bool) -> Iterator[tuple[int, str | PredictionError]]:
    """(line number from 1, the text or why the line holds none) for each non-blank line."""
    for number, line in enumerate(lines, start=1):
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        if not jsonl:
            yield number, line
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            yield number, PredictionError(f"not a JSON record: {error}")
            continue
        text = record.get("text") if isinstance(record, dict) else None
        yield number, text if isinstance(text, str) else PredictionError('the record has no "text" string')


def answer_chunks(numbered: Iterable[tuple[int, str | PredictionError]], answer: Answer,
                  chunk_lines: int = CHUNK_LINES) -> Iterator[dict]:  # fmt: skip
    """One record per line, in input order: `answer`'s, or ``{"line": n, "error": ...}`` for a failure.

    A chunk is answered in one call; when that call refuses a text, it is answered in halves, so only
    the lines at fault become errors.
    """
    chunk: list[tuple[int, str | PredictionError]] = []
    for item in numbered:
        chunk.append(item)
        if len(chunk) == chunk_lines:
            yield from _answer_chunk(chunk, answer)
            chunk = []
    if chunk:
        yield from _answer_chunk(chunk, answer)


def _answer_chunk(chunk: list[tuple[int, str | PredictionError]], answer: Answer) -> Iterator[dict]:
    texts = [(number, text) for number, text in chunk if isinstance(text, str)]
    answers = iter(_answer_halves(texts, answer))
    for number, text in chunk:
        yield next(answers) if isinstance(text, str) else {"line": number, "error": str(text)}


def _answer_halves(texts: list[tuple[int, str]], answer: Answer) -> list[dict]:
    """`answer` for all `texts` at once; where it refuses one, each half again, down to the lines at fault
    (a few calls more for each bad line, not one call per line)."""
    if not texts:
        return []
    try:
        return answer([text for _, text in texts])
    except (PredictionError, TypeError) as error:
        if len(texts) == 1:
            # the call saw a batch of one: the line number replaces its "Text 0 of the batch: "
            message = re.sub(r"^Text 0 of the batch: ", "", str(error))
            return [{"line": texts[0][0], "error": message[:1].upper() + message[1:]}]
    half = len(texts) // 2
    return _answer_halves(texts[:half], answer) + _answer_halves(texts[half:], answer)


def run_file(
    source: Path | None,
    output: Path | None,
    answer: Answer,
    show: Callable[[dict], str] | None = None,
    texts: list[str] | None = None,
) -> int:
    """Answer `texts`, or the lines of `source` (standard input if None); return how many failed.

    Records go to `output` as JSONL (written beside it and renamed over it when done, with a progress
    bar on stderr), or to stdout: as JSON, or as `show` writes each record when given.
    """
    failures = 0

    def write(records: Iterator[dict], stream: TextIO, bar=None) -> None:
        nonlocal failures
        for record in records:
            failures += "error" in record
            if show is None or output is not None:
                stream.write(json.dumps(record) + "\n")
            elif "error" in record:
                print(f"error: line {record['line']}: {record['error']}", file=sys.stderr)
            else:
                stream.write(show(record) + "\n")
            if bar is not None:
                bar.update()

    def records(lines: Iterable[str]) -> Iterator[dict]:
        if texts is not None:  # arguments: each one a text, blank or not
            return answer_chunks(enumerate(texts, start=1), answer)
        return answer_chunks(numbered_texts(lines, source is not None and source.suffix == ".jsonl"), answer)

    def run(lines: Iterable[str], total: int | None) -> None:
        if output is None:
            return write(records(lines), sys.stdout)
        from tqdm.auto import tqdm

        def fill(temporary: Path) -> None:
            with temporary.open("w", encoding="utf-8") as stream, tqdm(total=total, unit="text") as bar:
                write(records(lines), stream, bar)

        write_file_atomic(output, fill, "--output")

    if texts is not None:
        run(texts, len(texts))
    elif source is None:
        run(sys.stdin, None)
    else:
        if not source.is_file():
            raise PredictionError(f"--input {source} is not a file: give a text or .jsonl file.")
        with source.open(encoding="utf-8") as stream:  # counted first, for the progress bar: not kept
            total = sum(1 for line in stream if line.strip()) if output is not None else None
        with source.open(encoding="utf-8") as stream:
            run(stream, total)
    return failures
