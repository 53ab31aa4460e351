"""Choosing a partition for a record.

* A record with an explicit ``partition`` goes there.
* A keyed record goes to ``hash(key) % partitions``; the hash is ``xxh3_64`` (the default,
  ``partitioner="xxh3"``: fast, and the same function the batch codec uses for checksums) or Kafka's
  ``murmur2`` (``partitioner="murmur2"``: ``toPositive(murmur2(key)) % partitions`` exactly as the
  Java client computes it, so keys land on the same partition numbers as in a Kafka cluster with
  the same partition count). Either way the mapping changes when the partition count changes.
* A keyless record is *sticky*: it goes to one partition until that partition's batch is closed
  (full, or taken by the sender), then the next keyless record picks another partition at random
  (never the same one twice in a row when there are several). This fills batches instead of
  spreading single records over every partition, which is what makes batching pay.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable

import xxhash

__all__ = ["PARTITIONERS", "StickyPartitioner", "murmur2", "murmur2_partition", "xxh3_partition"]

_M = 0x5BD1E995
_MASK32 = 0xFFFFFFFF
_SEED = 0x9747B28C


def murmur2(data: bytes) -> int:
    """Kafka's ``Utils.murmur2``: 32-bit MurmurHash2 with seed 0x9747b28c, as a signed int32."""
    length = len(data)
    h = (_SEED ^ length) & _MASK32
    length4 = length & ~3
    for i in range(0, length4, 4):
        k = data[i] | (data[i + 1] << 8) | (data[i + 2] << 16) | (data[i + 3] << 24)
        k = (k * _M) & _MASK32
        k ^= k >> 24
        k = (k * _M) & _MASK32
        h = ((h * _M) & _MASK32) ^ k
    rest = length & 3
    if rest == 3:
        h ^= data[length4 + 2] << 16
    if rest >= 2:
        h ^= data[length4 + 1] << 8
    if rest >= 1:
        h ^= data[length4]
        h = (h * _M) & _MASK32
    h ^= h >> 13
    h = (h * _M) & _MASK32
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def murmur2_partition(key: bytes, partitions: int) -> int:
    """``Utils.toPositive(Utils.murmur2(key)) % partitions`` of the Java client."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def xxh3_partition(key: bytes, partitions: int) -> int:
    """Tidelog's default: ``xxh3_64(key) % partitions`` (unsigned 64-bit hash, seed 0)."""
    return xxhash.xxh3_64_intdigest(key) % partitions


PARTITIONERS: dict[str, Callable[[bytes, int], int]] = {
    "xxh3": xxh3_partition,
    "murmur2": murmur2_partition,
}


class StickyPartitioner:
    """The partition for keyless records of each topic; changes only when told its batch closed.

    Thread-safe: ``Producer.send`` may run on many threads while the sender closes batches.
    """

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()
        self._current: dict[str, int] = {}
        self._lock = threading.Lock()

    def partition(self, topic: str, partitions: int) -> int:
        current = self._current.get(topic)
        if current is not None and current < partitions:
            return current
        with self._lock:
            current = self._rng.randrange(partitions)
            self._current[topic] = current
            return current

    def batch_closed(self, topic: str, partition: int, partitions: int) -> None:
        """The open batch of (topic, partition) was closed; move on if it was the sticky one."""
        with self._lock:
            if self._current.get(topic) != partition:
                return
            if partitions <= 1:
                self._current[topic] = 0
                return
            nxt = self._rng.randrange(partitions - 1)
            self._current[topic] = nxt if nxt < partition else nxt + 1
