"""A digest of a log's committed prefix, to compare replicas byte for byte (issue 11: "replicas
are byte-identical after heal"; the chaos checker compares them after a heal).

It hashes the bytes of every batch from the log start through the last batch that ends at or
below `upto_offset`, exactly as storage serves them (each batch checksum-verified on the way):
the logical batches, so with encryption at rest the plaintext (decrypted and authenticated),
not the stored ciphertext, and replicas with different keys and nonces compare equal. Replicas
of a committed prefix hold identical logical bytes because the leader's stamped batch is what
every follower stores and control batches are a pure function of their Raft entry
(docs/batch-format.md), so equal prefixes give equal digests and any differing byte, missing
or extra batch gives a different one.
"""

from __future__ import annotations

import xxhash
from tidelog.node.storage.log import PartitionLog
from tidelog.proto.batch import iter_batches

__all__ = ["DIGEST_READ_BYTES_MAX", "committed_prefix_digest"]

DIGEST_READ_BYTES_MAX = 1 << 20
"""Bytes read per step: memory stays at about this (or one batch, if a batch is larger)."""


def committed_prefix_digest(log: PartitionLog, upto_offset: int, *,
                            from_offset: int | None = None) -> str:
    """xxh3_128 hex digest of the stored bytes of every batch whose last offset is <= upto_offset,
    in offset order (streaming, bounded memory), from the batch holding the log start, or with
    `from_offset` from the first batch whose base offset is >= from_offset (replicas whose
    retention moved their log starts differently can compare from the largest of them).

    A batch that straddles upto_offset is left out, and so is everything after it; if the log
    ends before upto_offset, the digest covers what it holds (and so differs from a replica that
    holds more). Damaged stored bytes raise CorruptLogError rather than being hashed.
    """
    digest = xxhash.xxh3_128()
    start = log.log_start_offset if from_offset is None else max(from_offset,
                                                                 log.log_start_offset)
    offset = start
    end = min(log.log_end_offset, upto_offset + 1)
    while offset < end:
        data = log.read(offset, DIGEST_READ_BYTES_MAX)
        view = memoryview(data)
        first = taken = 0
        for position, header in iter_batches(view, verify=False):  # read() verified them
            if from_offset is not None and header.base_offset < from_offset:
                first = taken = position + header.size  # straddles the start: left out
                offset = header.last_offset + 1
                continue
            if header.last_offset > upto_offset:
                end = offset  # stop: this batch ends past the prefix
                break
            taken = position + header.size
            offset = header.last_offset + 1
        digest.update(view[first:taken])
        if not data:  # pragma: no cover - read() returns at least one batch below the log end
            break
    return digest.hexdigest()
