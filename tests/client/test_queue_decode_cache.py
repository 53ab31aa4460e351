"""A stored batch a consumer already decoded is not decoded again by its next receive.

A receive of 100 gets the whole stored batch (~1,000 records); before the cache each batch was
decoded once per receive that touched it, 70% of a consumer's CPU in benchmarks/queue_bench.py.
"""

from __future__ import annotations

import pytest
from tidelog.client import errors
from tidelog.client.queue import DecodedBatches, decode_partition
from tidelog.proto import batch as codec

NOW_MS = 1_700_000_000_000


def stored(base_offset: int, count: int) -> bytes:
    records = [(None, f"v{base_offset + i}".encode(), (), NOW_MS + i) for i in range(count)]
    return codec.stamp(codec.encode_batch(records, codec=codec.Codec.LZ4),
                       base_offset=base_offset, term=2)


def values(messages: list) -> list[bytes]:  # type: ignore[type-arg]
    return [m.value for m in messages]


def test_consecutive_receives_of_one_batch_decode_it_once_with_the_same_messages() -> None:
    data = stored(0, 1000) + stored(1000, 1000)
    cache = DecodedBatches()
    for first in range(0, 2000, 100):
        ranges = [(first, first + 99, 1)]
        cached = decode_partition("q", "t", 0, data, ranges, NOW_MS, cache)
        plain = decode_partition("q", "t", 0, data, ranges, NOW_MS)
        assert cached == plain
        assert values(cached) == [f"v{o}".encode() for o in range(first, first + 100)]
    # 20 receives over 2 batches: each batch decoded once, then found 9 times.
    assert (cache.misses, cache.hits) == (2, 18)


def test_the_cache_key_is_the_verified_header_a_different_batch_at_that_offset_misses() -> None:
    cache = DecodedBatches()
    decode_partition("q", "t", 0, stored(0, 10), [(0, 9, 1)], NOW_MS, cache)
    other = codec.stamp(codec.encode_batch([(None, b"other", (), NOW_MS)] * 10,
                                           codec=codec.Codec.LZ4), base_offset=0, term=3)
    got = decode_partition("q", "t", 0, other, [(0, 9, 2)], NOW_MS, cache)
    assert values(got) == [b"other"] * 10 and cache.hits == 0
    # Same offset, other partition: a different key too.
    got = decode_partition("q", "t", 1, stored(0, 10), [(0, 0, 1)], NOW_MS, cache)
    assert cache.hits == 0 and values(got) == [b"v0"]


def test_a_damaged_batch_not_yet_decoded_is_still_refused() -> None:
    data = bytearray(stored(0, 50))
    data[-3] ^= 0xFF  # in the compressed records: the records checksum no longer matches
    with pytest.raises(errors.CorruptBatch):
        decode_partition("q", "t", 0, bytes(data), [(0, 49, 1)], NOW_MS, DecodedBatches())


def test_the_cache_is_bounded() -> None:
    cache = DecodedBatches(batches_max=4)
    for base in range(0, 100, 10):
        decode_partition("q", "t", 0, stored(base, 10), [(base, base, 1)], NOW_MS, cache)
    decode_partition("q", "t", 0, stored(0, 10), [(0, 0, 1)], NOW_MS, cache)
    assert cache.hits == 0  # batch 0 was dropped long ago
    decode_partition("q", "t", 0, stored(90, 10), [(91, 91, 1)], NOW_MS, cache)
    assert cache.hits == 1
