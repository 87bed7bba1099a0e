"""A bounded memory of answers for `Predictor`: a question asked again is answered without the model.

`ResultCache` maps a key (a text and the options that change its answer) to a value, keeps the
`max_size` most recently used, and answers a batch of keys with one call that computes only the keys it
does not hold, each once, however often it repeats in the batch. Values are stored as given, so they
should be immutable: the caller hands out copies of anything mutable. It is safe to use from several
threads: one lock guards the entries and counts, and `compute` runs outside it, so two threads can
compute at once (the same key asked by both at the same moment is then computed by both, and the first
answer stored is kept).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

Value = TypeVar("Value")


@dataclass(frozen=True)
class CacheInfo:
    """What a cache has done since it was made or cleared, in the terms of functools' CacheInfo.

    Every text of a call is a hit (answered from memory, or as a repeat of a text earlier in the same
    call) or a miss (computed), once the call has answered.
    """

    hits: int
    misses: int
    size: int  # answers held
    max_size: int  # most answers held; 0: none, and every text of a call is computed


class ResultCache(Generic[Value]):
    """At most `max_size` values, the least recently used let go first; `max_size` 0 holds none.

    >>> cache = ResultCache(2)
    >>> cache.answer(["a", "b", "a"], lambda positions: [f"value of {p}" for p in positions])
    ['value of 0', 'value of 1', 'value of 0']
    >>> cache.info()
    CacheInfo(hits=1, misses=2, size=2, max_size=2)
    """

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._entries: OrderedDict[Hashable, Value] = OrderedDict()
        self._lock = threading.Lock()
        self._hits = self._misses = 0
        self._version: object = None

    def answer(self, keys: Sequence[Hashable], compute: Callable[[list[int]], list[Value]]) -> list[Value]:
        """The value of each key: those held from memory, the others from one call of `compute`.

        `compute` gets the positions in `keys` of the first occurrence of each key not held, and returns
        their values in that order. When it raises, nothing is stored or counted. With `max_size` 0, it
        gets every position, repeats included, as if there were no cache.
        """
        if not self.max_size:
            values = compute(list(range(len(keys))))
            with self._lock:
                self._misses += len(keys)
            return values
        with self._lock:
            held = {key: self._entries[key] for key in keys if key in self._entries}
            for key in held:
                self._entries.move_to_end(key)
        first: dict[Hashable, int] = {}  # each key not held -> its first position
        for position, key in enumerate(keys):
            if key not in held:
                first.setdefault(key, position)
        computed = dict(zip(first, compute(list(first.values())))) if first else {}
        with self._lock:
            for key, value in computed.items():
                self._entries.setdefault(key, value)  # another thread's answer, stored meanwhile, stays
                self._entries.move_to_end(key)
            while len(self._entries) > self.max_size:
                self._entries.popitem(last=False)
            self._hits += len(keys) - len(first)
            self._misses += len(first)
        return [held[key] if key in held else computed[key] for key in keys]

    def info(self) -> CacheInfo:
        with self._lock:
            return CacheInfo(self._hits, self._misses, len(self._entries), self.max_size)

    def clear_unless(self, version: object) -> None:
        """Let every answer go if they were stored under another `version` (of what computes them)."""
        with self._lock:
            if version != self._version:
                self._entries.clear()
                self._version = version

    def clear(self) -> None:
        """Let every answer go and count from zero again."""
        with self._lock:
            self._entries.clear()
            self._hits = self._misses = 0
