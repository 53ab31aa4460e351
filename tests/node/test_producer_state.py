"""Producer-state records carry the term of the attempt, and stale ones can be forgotten.

Regression for a lost acknowledged write found by `tidelog chaos run pause-leader --seed 11`: a
leader recorded a proposed batch, was paused, lost the entry from its log tail to the next
leader's no-op, and later (leader again) answered the producer's retry with the old offsets,
which by then held the no-op. The node now waits on the attempt's own term and forgets the
stale record (node/server.py `Node.produce`).
"""

from __future__ import annotations

from tidelog.node.producer_state import ProducerStateTable
from tidelog.proto.batch import decode_header, encode_batch


def header(seq: int, count: int = 1):  # type: ignore[no-untyped-def]
    raw = encode_batch([(b"k", b"v", (), 0)] * count, producer_id=7, producer_epoch=0,
                       base_sequence=seq)
    return decode_header(raw)


def test_a_retry_is_answered_with_the_term_of_the_earlier_attempt() -> None:
    table = ProducerStateTable()
    table.record(header(0), 70, term=1)
    dup = table.check(header(0))
    assert dup is not None and (dup.base_offset, dup.last_offset, dup.term) == (70, 70, 1)


def test_a_forgotten_stale_record_lets_the_retry_be_written_again() -> None:
    table = ProducerStateTable()
    table.record(header(0, 2), 60, term=1)  # sequences 0-1, committed
    table.record(header(2), 70, term=1)  # sequence 2: dropped from the log tail later
    table.record(header(3), 71, term=1)  # sequence 3: likewise
    table.forget_from(7, 70)
    assert table.check(header(2)) is None  # not a duplicate any more, and in sequence
    assert table.check(header(0, 2)) is not None  # the committed one is still known
