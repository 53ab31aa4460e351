"""Partitioners: Kafka-compatible murmur2, xxh3 default, sticky keyless choice."""

from __future__ import annotations

import random

import pytest
import xxhash
from tidelog.client.partitioner import (
    StickyPartitioner,
    murmur2,
    murmur2_partition,
    xxh3_partition,
)

# From Apache Kafka's clients/src/test/java/org/apache/kafka/common/utils/UtilsTest.testMurmur2.
KAFKA_UTILS_TEST_VECTORS = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}
# Values of the Java client's Utils.murmur2 quoted by Akka's Kafka-compatible sharding tests.
MORE_JAVA_VECTORS = {
    b"1": -1993445489,
    b"12": 126087238,
    b"123": -267702483,
    b"1234": -1614185708,
    b"12345": -1188365604,
}


@pytest.mark.parametrize(("key", "expected"), sorted({**KAFKA_UTILS_TEST_VECTORS,
                                                      **MORE_JAVA_VECTORS}.items()))
def test_murmur2_matches_the_java_client(key: bytes, expected: int) -> None:
    assert murmur2(key) == expected


def test_murmur2_partition_is_to_positive_mod_partitions() -> None:
    for key, h in KAFKA_UTILS_TEST_VECTORS.items():
        for partitions in (1, 3, 12, 100):
            assert murmur2_partition(key, partitions) == (h & 0x7FFFFFFF) % partitions


def test_murmur2_of_empty_key_is_defined() -> None:
    # No published vector for the empty key; check it is defined and in range.
    assert murmur2(b"") == murmur2(bytearray())
    assert 0 <= murmur2_partition(b"", 7) < 7


def test_xxh3_partition_is_xxh3_64_mod_partitions() -> None:
    rng = random.Random(5)
    for _ in range(200):
        key = rng.randbytes(rng.randrange(0, 40))
        assert xxh3_partition(key, 12) == xxhash.xxh3_64_intdigest(key) % 12


def test_keyed_partitioning_spreads_keys() -> None:
    counts = [0] * 12
    for i in range(12_000):
        counts[xxh3_partition(f"key-{i}".encode(), 12)] += 1
    assert min(counts) > 800


def test_sticky_partitioner_keeps_one_partition_until_its_batch_closes() -> None:
    sticky = StickyPartitioner(random.Random(1))
    first = sticky.partition("t", 6)
    assert all(sticky.partition("t", 6) == first for _ in range(100))
    sticky.batch_closed("t", (first + 1) % 6, 6)  # another partition's batch: no change
    assert sticky.partition("t", 6) == first
    sticky.batch_closed("t", first, 6)
    second = sticky.partition("t", 6)
    assert second != first


def test_sticky_partitioner_visits_every_partition() -> None:
    sticky = StickyPartitioner(random.Random(2))
    seen = set()
    for _ in range(200):
        p = sticky.partition("t", 4)
        seen.add(p)
        sticky.batch_closed("t", p, 4)
    assert seen == {0, 1, 2, 3}


def test_sticky_partitioner_with_one_partition() -> None:
    sticky = StickyPartitioner(random.Random(3))
    assert sticky.partition("t", 1) == 0
    sticky.batch_closed("t", 0, 1)
    assert sticky.partition("t", 1) == 0
