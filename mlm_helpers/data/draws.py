"""Random numbers as a pure function of where they are used: (key, example, counter) -> [0, 1).

A counter-based generator (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011) holds
no state: draw number `counter` of example number `example` is a hash of the three, so the draws of
any example can be made alone, in any order, in any process, and those of a whole batch in a few numpy
operations. The hash is splitmix64 (Steele, Lea and Flood, "Fast splittable pseudorandom number
generators", OOPSLA 2014): example e's stream starts at ``mix(key + e * GOLDEN)``, and its draw c is
splitmix64's output number c + 1 from there, ``mix(start + (c + 1) * GOLDEN)``.

All arithmetic is on numpy uint64 arrays of at least one dimension, which wrap modulo 2**64 without a
warning (numpy warns of overflow for scalars only, so nothing here is a scalar).
"""

from __future__ import annotations

import hashlib

import numpy as np

GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # 2**64 / the golden ratio: splitmix64's increment
_MIX_1, _MIX_2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_TO_UNIT = 2.0**-53  # 53 random bits -> a double in [0, 1), every value equally likely


def key_of(seed: int) -> int:
    """A 64-bit key for `seed`. Hashing keeps the draws of nearby seeds (0, 1, 2...) unrelated.

    >>> key_of(0)
    24226232754993955
    """
    digest = hashlib.blake2b(f"mask:{seed}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's output function, in place on a uint64 array (returned too)."""
    z ^= z >> np.uint64(30)
    z *= _MIX_1
    z ^= z >> np.uint64(27)
    z *= _MIX_2
    z ^= z >> np.uint64(31)
    return z


def streams(key: int, examples: np.ndarray) -> np.ndarray:
    """Where the streams of `examples` (example numbers, any int array) start under `key`: uint64."""
    numbers = np.atleast_1d(np.asarray(examples)).astype(np.uint64)
    return mix(numbers * GOLDEN + np.uint64(key))


def uniforms(starts: np.ndarray, counters: np.ndarray) -> np.ndarray:
    """Draw number `counters` of the streams at `starts` (broadcast together): doubles in [0, 1).

    >>> uniforms(streams(key_of(0), [0, 1]), np.arange(3)[:, None]).shape  # 3 draws of 2 examples
    (3, 2)
    """
    counters = np.atleast_1d(np.asarray(counters)).astype(np.uint64)
    state = (counters + np.uint64(1)) * GOLDEN + starts
    return (mix(state) >> np.uint64(11)) * _TO_UNIT
