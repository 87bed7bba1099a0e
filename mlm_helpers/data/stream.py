"""The training examples: an endless, seeded, resumable stream over the training rows.

Rows are shuffled in a seeded buffer, tokenized in chunks and packed into blocks (or kept one per
row), pass after pass. Everything the stream holds between two examples - where the row reader is,
the shuffle buffer and its generator, tokens read but not yet emitted, the example count - is in
`state_dict()`, a plain JSON-able dict. A stream loaded from it continues with exactly the examples an
uninterrupted one would have produced, without re-reading what was consumed. For whole-word masking
(`word_marks=True`) the ids carry word marks (see `examples`), so the state stays lists of ints.

We shuffle here rather than with `datasets`' own `shuffle()` because its buffer is not part of
`IterableDataset.state_dict()`: it is refilled empty on resume, so the order (and the training run)
would change. The row reader's position does come from `datasets`.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import datasets

from ..config import ConfigError
from .examples import TOKENIZE_CHUNK, encode_ids, next_example, require_word_ids
from .sources import clean_texts

STATE_VERSION = 4  # 2: held-out rows filtered by text, not skipped; 3: rows read in chunks; 4: as tables


class ExampleStream:
    """Endless token-id examples of `length` tokens from `rows`, with `state_dict()` / `load_state_dict()`.

    With `word_marks`, the pieces that continue a word are marked (``~id``, see `mark_continuations`)
    for a whole-word `MaskedLanguageModelingDataset`, the one reader of such examples.

    >>> stream = ExampleStream(rows, "text", tokenizer, length=128, packing="packed", seed=0)
    >>> first = next(iter(stream)); saved = stream.state_dict()
    """

    def __init__(
        self,
        rows: datasets.IterableDataset,
        text_column: str,
        tokenizer,
        length: int,
        packing: str = "packed",
        shuffle_buffer: int = 10_000,
        seed: int = 0,
        word_marks: bool = False,
    ) -> None:
        # Read as Arrow tables: a chunk's texts come out in one `to_pylist`, where `datasets` otherwise
        # makes a dict per row and joins them again (half the time of reading the rows).
        self.rows, self.text_column, self.tokenizer = rows.with_format("arrow"), text_column, tokenizer
        if word_marks:
            require_word_ids(tokenizer)  # a slow tokenizer is refused here, before any text is read
        self.word_marks = word_marks
        self.length, self.packing = length, packing
        self.shuffle_buffer, self.seed = max(shuffle_buffer, 1), seed
        self.ends = (tokenizer.cls_token_id, tokenizer.sep_token_id)  # looked up once, not per example
        self.state = _fresh_state(epoch=0, position=0)

    @property
    def position(self) -> int:
        """How many examples the stream has produced in all."""
        return self.state["position"]

    def state_dict(self) -> dict:
        """A JSON-able copy of where the stream is."""
        state = dict(self.state)
        state["buffer"] = list(state["buffer"])
        state["pending"] = [list(ids) for ids in state["pending"]]
        state["carry"] = list(state["carry"])
        state["unread"] = list(state["unread"])
        return state

    def load_state_dict(self, state: dict) -> None:
        if state.get("version") != STATE_VERSION:
            raise ConfigError(
                f"The checkpoint's data stream has state version {state.get('version')!r}, which this "
                f"version of mlm_helpers ({STATE_VERSION}) cannot continue exactly. Resume with the version "
                "that wrote it, or use --no-resume to start over."
            )
        self.state = {
            **state,
            "buffer": list(state["buffer"]),
            "pending": [list(p) for p in state["pending"]],
            "carry": list(state["carry"]),
            "unread": list(state["unread"]),
        }

    def __iter__(self) -> Iterator[list[int]]:
        while True:
            fresh = self.state["rows"] is None  # a pass from the start, not one resumed near its end
            produced = False
            for example in self._one_pass():
                produced = True
                yield example
            if fresh and not produced:
                raise ConfigError(
                    f"The training text does not fill one example of {self.length} tokens. Use more "
                    "text, a smaller --eval-size or --max-length, or --packing sentence."
                )
            self.state = _fresh_state(self.state["epoch"] + 1, self.state["position"])

    def _one_pass(self) -> Iterator[list[int]]:
        state = self.state
        generator = random.Random(f"{self.seed}:{state['epoch']}")
        if state["rng"] is not None:
            generator.setstate(_tuple_state(state["rng"]))
        # `datasets` ignores a saved position whose epoch differs from the stream's current one.
        self.rows.set_epoch(state["epoch"])
        if state["rows"] is not None:
            self.rows.load_state_dict(state["rows"])
        # Whole chunks of rows at a time: cheaper than row by row, and `iter()`, unlike iterating the
        # dataset itself, does not split the rows once more when this runs in a DataLoader worker.
        chunks = self.rows.iter(batch_size=TOKENIZE_CHUNK)
        exhausted = False
        while True:
            while (example := self._take_example()) is not None:
                yield example
            if exhausted and not state["buffer"]:
                return
            exhausted = self._refill(chunks, generator)

    def _refill(self, chunks: Iterator[dict], generator: random.Random) -> bool:
        """Draw a chunk of rows through the shuffle buffer and tokenize it; True once rows ran out.

        A draw takes the row at a random place in the full buffer and puts the next unread row in its
        place; once the rows have run out, draws empty the buffer. `random()` scaled to the buffer's
        size picks the place: a third of the cost of `randrange`, with a bias of about size / 2**53.
        """
        state = self.state
        buffer, drawn, exhausted = state["buffer"], [], False
        while len(drawn) < TOKENIZE_CHUNK:
            unread = state["unread"]  # rows read from the dataset but not yet in the buffer
            if not unread and not exhausted:
                chunk = next(chunks, None)
                exhausted = chunk is None
                if not exhausted:
                    texts = chunk[self.text_column].to_pylist()
                    state["unread"] = list(clean_texts(texts, self.text_column))
                continue
            if unread and len(buffer) < self.shuffle_buffer:
                room = self.shuffle_buffer - len(buffer)
                buffer.extend(unread[:room])
                del unread[:room]
            elif unread:
                random, size = generator.random, len(buffer)
                take = min(len(unread), TOKENIZE_CHUNK - len(drawn))
                for text in unread[:take]:
                    index = int(random() * size)
                    drawn.append(buffer[index])
                    buffer[index] = text
                del unread[:take]
            elif buffer:
                index = int(generator.random() * len(buffer))
                buffer[index], buffer[-1] = buffer[-1], buffer[index]
                drawn.append(buffer.pop())
            else:
                break
        if drawn:
            state["pending"].extend(encode_ids(drawn, self.tokenizer, self.word_marks))
        state["rows"] = self.rows.state_dict()
        state["rng"] = _list_state(generator.getstate())
        return exhausted

    def _take_example(self) -> list[int] | None:
        """The next example from tokens already read, or None when more rows are needed."""
        state = self.state
        example = next_example(state["pending"], state["carry"], self.length, self.packing, *self.ends)
        if example is not None:
            state["position"] += 1
        return example


def _fresh_state(epoch: int, position: int) -> dict:
    return {"version": STATE_VERSION, "epoch": epoch, "position": position, "rows": None, "rng": None,
            "unread": [], "buffer": [], "pending": [], "carry": []}  # fmt: skip


def _list_state(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _tuple_state(state: list) -> tuple:
    version, internal, gauss = state
    return (version, tuple(internal), gauss)
