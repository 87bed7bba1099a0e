"""The counter-based draws (data/draws.py): splitmix64 itself, a pure function of (key, example, counter)."""

import warnings

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from mlm_helpers.data.draws import GOLDEN, key_of, mix, streams, uniforms

M64 = 2**64 - 1


def reference_mix(z: int) -> int:
    """splitmix64's output function on a Python int, the way its authors' C code writes it."""
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9 & M64
    z = (z ^ (z >> 27)) * 0x94D049BB133111EB & M64
    return z ^ (z >> 31)


def reference_uniform(key: int, example: int, counter: int) -> float:
    start = reference_mix((key + example * int(GOLDEN)) & M64)
    return (reference_mix((start + (counter + 1) * int(GOLDEN)) & M64) >> 11) * 2.0**-53


def test_the_stream_is_splitmix64():
    # The first outputs of splitmix64 seeded with 1234567, as its reference implementation prints them.
    state = np.full(5, 1234567, dtype=np.uint64)
    outputs = mix(state + np.arange(1, 6, dtype=np.uint64) * GOLDEN)
    assert outputs.tolist() == [6457827717110365317, 3203168211198807973, 9817491932198370423,
                                4593380528125082431, 16408922859458223821]  # fmt: skip


@given(
    key=st.integers(0, M64),
    examples=st.lists(st.integers(0, 2**62), min_size=1, max_size=8),
    counters=st.lists(st.integers(0, 2**20), min_size=1, max_size=8),
)
def test_uniforms_are_a_pure_function_of_key_example_and_counter(key, examples, counters):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # wrapping uint64 arithmetic must not warn
        table = uniforms(streams(key, examples)[:, None], np.array(counters))
    expected = [[reference_uniform(key, e, c) for c in counters] for e in examples]
    assert table.tolist() == expected
    assert ((table >= 0) & (table < 1)).all()
    # one example's draws alone are its row of a batch's draws
    assert uniforms(streams(key, examples[-1:]), np.array(counters)).tolist() == expected[-1]


def test_uniforms_look_uniform_and_independent():
    draws = uniforms(streams(key_of(0), np.arange(2000))[:, None], np.arange(100))
    n = draws.size
    counts, _ = np.histogram(draws, bins=20, range=(0, 1))
    chi_square = (((counts - n / 20) ** 2) / (n / 20)).sum()
    assert chi_square < 45  # 19 degrees of freedom: p < 0.001 above 43.8
    # neighbouring examples and neighbouring counters are uncorrelated (sd of r: 1 / sqrt(n))
    for a, b in ((draws[:-1], draws[1:]), (draws[:, :-1], draws[:, 1:])):
        assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < 5 / np.sqrt(a.size)


def test_nearby_seeds_get_unrelated_keys():
    keys = [key_of(seed) for seed in range(1000)]
    assert len(set(keys)) == 1000
    # the key a checkpoint's masks were drawn under: a new version that changed it could not resume them
    assert key_of(0) == 24226232754993955
