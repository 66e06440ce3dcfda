"""Every pair of 64-bit hashes within a Hamming distance, without comparing all pairs.

Multi-index hashing (Norouzi, Punjani and Fleet, "Fast Search in Hamming Space with
Multi-Index Hashing", CVPR 2012). Cut each hash into ``m`` chunks of bits. If two hashes
differ in at most ``r`` bits, at least one of their chunks differs in at most ``r // m``
bits (pigeonhole). So, per chunk, the hashes are sorted by that chunk's value, and every
hash looks up the chunk values within ``r // m`` bit flips of its own with a binary search.
The few candidates found that way are verified on all 64 bits. With chunks of about
log2(n) bits each lookup finds about one candidate, so the work grows like n, not n².

Everything runs as numpy passes over all hashes at once: one pass per (chunk, bit flip).
``brute_force_pairs`` is the all-pairs reference, for tests and the benchmark.

Both functions take hashes as unsigned 64-bit integers and return an ``(k, 2)`` int64 array
of index pairs ``i < j``, sorted. Many *identical* hashes make the output itself quadratic
(every pair is returned): group equal hashes first (``np.unique``) when that can happen.
"""

from __future__ import annotations

from itertools import combinations
from math import comb

import numpy as np
from numpy.typing import ArrayLike

HASH_BITS = 64
BLOCK_ELEMENTS = 1 << 23  # brute force: hashes compared per numpy call (bounds memory)
MAX_CHUNK_BITS = 22  # a chunk's bucket table has 2**bits entries
# Cost model of chunk_layout, in units of "one candidate verified" (measured on 2 cores):
LOOKUP_COST = 3  # one hash's bucket lookup
PASS_OVERHEAD = 2000  # one numpy pass over all hashes


def as_hashes(hashes: ArrayLike) -> np.ndarray:
    """Hashes as a 1-D uint64 array (Python ints up to 2**64 - 1 are accepted)."""
    array = np.asarray(hashes, dtype=np.uint64)
    if array.ndim != 1:
        raise ValueError(f"hashes must be 1-D, got shape {array.shape}")
    return array


def hamming(a: ArrayLike, b: ArrayLike) -> np.ndarray:
    """Number of differing bits, elementwise (broadcasting)."""
    a, b = np.asarray(a, dtype=np.uint64), np.asarray(b, dtype=np.uint64)
    return np.bitwise_count(a ^ b).astype(np.int64)


def brute_force_pairs(hashes: ArrayLike, radius: int) -> np.ndarray:
    """All pairs ``i < j`` with ``hamming(h[i], h[j]) <= radius``, comparing every pair."""
    h = as_hashes(hashes)
    n = len(h)
    block = max(1, BLOCK_ELEMENTS // max(n, 1))
    found = []
    for start in range(0, n, block):
        rows = h[start : start + block]
        # Compare each row only with the hashes after it: j > i.
        close = np.bitwise_count(rows[:, None] ^ h[None, start:]) <= radius
        i, j = np.nonzero(close)
        keep = j > i
        found.append(np.stack([i[keep] + start, j[keep] + start], axis=1))
    return _sorted_unique(found)


def pairs_within(hashes: ArrayLike, radius: int) -> np.ndarray:
    """All pairs ``i < j`` with ``hamming(h[i], h[j]) <= radius``, by multi-index hashing."""
    if not 0 <= radius < HASH_BITS:
        raise ValueError(f"radius must be in [0, {HASH_BITS - 1}], got {radius}")
    h = as_hashes(hashes)
    if len(h) < 2:
        return np.empty((0, 2), dtype=np.int64)
    chunks = chunk_layout(len(h), radius)
    sub_radius = radius // len(chunks)
    found = []
    for shift, bits in chunks:
        keys = ((h >> np.uint64(shift)) & np.uint64((1 << bits) - 1)).astype(np.int64)
        order = np.argsort(keys, kind="stable")
        # Hashes whose chunk equals v are order[start[v]:start[v + 1]] (a counting sort).
        start = np.concatenate([[0], np.cumsum(np.bincount(keys, minlength=1 << bits))])
        for flip in bit_flips(bits, sub_radius):
            probe = keys ^ flip
            query, candidate = _expand(start[probe], start[probe + 1], order)
            keep = query < candidate  # each unordered pair once, never a hash with itself
            query, candidate = query[keep], candidate[keep]
            close = hamming(h[query], h[candidate]) <= radius
            found.append(np.stack([query[close], candidate[close]], axis=1))
    return _sorted_unique(found)


def chunk_layout(n: int, radius: int) -> list[tuple[int, int]]:
    """(shift, bits) of each chunk, for the chunk count with the lowest estimated cost.

    Cost of ``m`` chunks: every hash runs ``probes`` lookups per chunk (all bit flips within
    ``radius // m``), each finding about ``n / 2**bits`` candidates to verify, plus a fixed
    cost per numpy pass. Few chunks mean many probes, many chunks mean big buckets. The model
    assumes roughly uniform hash bits: skewed hashes cost more time, never wrong results.
    """

    def cost(m: int) -> float:
        bits = HASH_BITS // m
        probes = sum(comb(bits, k) for k in range(radius // m + 1))
        return m * probes * (n * (LOOKUP_COST + n / 2.0**bits) + PASS_OVERHEAD)

    fewest = -(-HASH_BITS // MAX_CHUNK_BITS)
    best = min(range(fewest, max(fewest, radius + 1) + 1), key=cost)
    sizes = [HASH_BITS // best + (1 if i < HASH_BITS % best else 0) for i in range(best)]
    shifts = np.cumsum([0, *sizes[:-1]])
    return [(int(shift), size) for shift, size in zip(shifts, sizes, strict=True)]


def bit_flips(bits: int, radius: int) -> list[int]:
    """Every mask of ``bits`` bits with at most ``radius`` bits set (0 first)."""
    return [
        sum(1 << bit for bit in chosen)
        for k in range(radius + 1)
        for chosen in combinations(range(bits), k)
    ]


def _expand(low: np.ndarray, high: np.ndarray, order: np.ndarray) -> tuple[np.ndarray, ...]:
    """(query, candidate) index arrays: query ``q`` paired with ``order[low[q]:high[q]]``."""
    counts = high - low
    query = np.repeat(np.arange(len(low)), counts)
    starts = np.repeat(low - np.cumsum(counts) + counts, counts)  # low[q] - offset of q's run
    candidate = order[starts + np.arange(counts.sum())]
    return query, candidate


def _sorted_unique(parts: list[np.ndarray]) -> np.ndarray:
    if not parts:
        return np.empty((0, 2), dtype=np.int64)
    pairs = np.concatenate(parts).astype(np.int64)
    return np.unique(pairs, axis=0) if len(pairs) else pairs.reshape(0, 2)
