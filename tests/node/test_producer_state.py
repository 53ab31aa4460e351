"""Producer-state records carry the term of the attempt, and stale ones can be forgotten.

Regression for a lost acknowledged write found by `tidelog chaos run pause-leader --seed 11`: a
leader recorded a proposed batch, was paused, lost the entry from its log tail to the next
leader's no-op, and later (leader again) answered the producer's retry with the old offsets,
which by then held the no-op. The node now waits on the attempt's own term and forgets the
stale record (node/server.py `Node.produce`).
"""

from __future__ import annotations

import pytest
from tidelog.node.errors import OutOfOrderSequenceError, ProducerFencedError
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


def epoch_header(epoch: int, seq: int):  # type: ignore[no-untyped-def]
    raw = encode_batch([(b"k", b"v", (), 0)], producer_id=7, producer_epoch=epoch,
                       base_sequence=seq)
    return decode_header(raw)


def test_a_new_epoch_must_start_at_sequence_zero() -> None:
    """Kafka: the first batch of a bumped epoch carries sequence 0; anything else means its
    earlier batches are missing (it used to reset the sequence silently)."""
    table = ProducerStateTable()
    table.record(epoch_header(0, 0), 10, term=1)
    with pytest.raises(OutOfOrderSequenceError, match="a new epoch starts at 0"):
        table.check(epoch_header(1, 5))
    assert table.check(epoch_header(1, 0)) is None


def test_a_zombie_is_fenced_by_the_latest_epoch_even_where_its_successor_never_wrote() -> None:
    table = ProducerStateTable()
    table.record(epoch_header(0, 0), 10, term=1)
    assert table.check(epoch_header(0, 1), latest_epoch=0) is None
    with pytest.raises(ProducerFencedError, match="newer instance holds epoch 1"):
        table.check(epoch_header(0, 1), latest_epoch=1)
    with pytest.raises(ProducerFencedError):
        ProducerStateTable().check(epoch_header(0, 0), latest_epoch=1)  # an empty partition too
