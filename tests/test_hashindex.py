"""Near-duplicate search (pipeline/data/quality/hashindex.py): multi-index hashing against
brute force."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.data.quality import hashindex


def planted(n: int, copies: int, max_flips: int, seed: int = 0) -> np.ndarray:
    """``n`` random 64-bit hashes plus ``copies`` of them with up to ``max_flips`` bits flipped."""
    rng = np.random.default_rng(seed)
    hashes = rng.integers(0, 2**64, size=n, dtype=np.uint64, endpoint=False)
    sources = rng.integers(0, n, size=copies)
    flipped = hashes[sources].copy()
    for i in range(copies):
        for bit in rng.choice(64, size=rng.integers(0, max_flips + 1), replace=False):
            flipped[i] ^= np.uint64(1) << np.uint64(bit)
    return np.concatenate([hashes, flipped])


def as_set(pairs: np.ndarray) -> set[tuple[int, int]]:
    return {(int(i), int(j)) for i, j in pairs}


@pytest.mark.parametrize("radius", [0, 1, 2, 4, 6, 8, 12])
@pytest.mark.parametrize("n", [2, 50, 3000])
def test_same_pairs_as_brute_force(n, radius):
    hashes = planted(n, copies=max(1, n // 20), max_flips=radius + 2, seed=n + radius)
    found = hashindex.pairs_within(hashes, radius)
    expected = hashindex.brute_force_pairs(hashes, radius)
    assert np.array_equal(found, expected)
    assert len(expected) > 0 or n == 2
    assert (found[:, 0] < found[:, 1]).all()
    assert (hashindex.hamming(hashes[found[:, 0]], hashes[found[:, 1]]) <= radius).all()


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(0, 2**64 - 1), min_size=0, max_size=40),
    st.integers(0, 16),
)
def test_any_hashes_match_brute_force(values, radius):
    # Hypothesis likes duplicates, 0 and 2**64 - 1: exactly the edge cases.
    assert as_set(hashindex.pairs_within(values, radius)) == as_set(
        hashindex.brute_force_pairs(values, radius)
    )


def test_identical_hashes_are_all_paired():
    pairs = hashindex.pairs_within([5, 5, 5, 2**63], 0)
    assert as_set(pairs) == {(0, 1), (0, 2), (1, 2)}


def test_chunks_cover_the_64_bits_and_shrink_with_more_hashes():
    for n, radius in [(10, 0), (10_000, 4), (100_000, 8), (1_000_000, 3)]:
        chunks = hashindex.chunk_layout(n, radius)
        assert sum(bits for _, bits in chunks) == 64
        assert [shift for shift, _ in chunks] == list(
            np.cumsum([0, *[bits for _, bits in chunks[:-1]]])
        )
        assert max(bits for _, bits in chunks) <= hashindex.MAX_CHUNK_BITS


def test_bit_flips_enumerates_each_mask_once():
    flips = hashindex.bit_flips(5, 2)
    assert len(flips) == len(set(flips)) == 1 + 5 + 10
    assert flips[0] == 0 and all(bin(f).count("1") <= 2 for f in flips)


def test_bad_radius_is_refused():
    with pytest.raises(ValueError, match="radius"):
        hashindex.pairs_within([1, 2], 64)
    with pytest.raises(ValueError, match="1-D"):
        hashindex.pairs_within([[1, 2]], 1)
