"""The bytes a replica stores for a Raft entry are a pure function of the entry (issue 11 defect
10): replicas of a committed prefix are byte-identical, whatever their clocks say."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from tidelog.node import raft_log
from tidelog.node.raft.types import Entry, EntryKind, LogIndex, Membership, NodeId, Term
from tidelog.node.raft_log import to_batch, to_entry
from tidelog.node.storage import LogConfig, PartitionLog
from tidelog.node.storage.digest import committed_prefix_digest
from tidelog.proto.batch import NO_TIMESTAMP, encode_batch, validate_batch

CONFIG_DATA = Membership(voters=frozenset({NodeId(1), NodeId(2), NodeId(3)}),
                         learners=frozenset()).encode()


def _entries() -> list[Entry]:
    produced = encode_batch([(b"k", b"v", (), 1_700_000_000_000)] * 3)  # as the producer sent it
    return [
        Entry(term=Term(1), index=LogIndex(0), count=1, kind=EntryKind.NOOP),
        Entry(term=Term(1), index=LogIndex(1), count=1, kind=EntryKind.CONFIG, data=CONFIG_DATA),
        Entry(term=Term(1), index=LogIndex(2), count=3, kind=EntryKind.DATA, data=produced),
        Entry(term=Term(2), index=LogIndex(5), count=1, kind=EntryKind.NOOP),
    ]


def _clock_moves_by(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    real_time, real_time_ns = time.time, time.time_ns
    monkeypatch.setattr(time, "time", lambda: real_time() + seconds)
    monkeypatch.setattr(time, "time_ns", lambda: real_time_ns() + int(seconds * 1e9))


def test_two_to_batch_calls_at_different_clock_times_give_identical_bytes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    first = [to_batch(e) for e in _entries()]
    _clock_moves_by(monkeypatch, 3_600.5)  # another replica, an hour ahead
    second = [to_batch(e) for e in _entries()]
    assert first == second
    for batch, entry in zip(first, _entries(), strict=True):
        header = validate_batch(batch, max_bytes=1 << 20)
        assert (header.base_offset, header.term) == (entry.index, entry.term)
        if entry.kind is not EntryKind.DATA:
            assert header.first_timestamp == header.max_timestamp == NO_TIMESTAMP


def test_a_stored_entry_read_back_and_re_encoded_gives_the_same_bytes() -> None:
    """A follower receives entries read from the leader's log (to_entry) and encodes them
    again (to_batch): the round trip must not change a byte."""
    for entry in _entries():
        stored = to_batch(entry)
        assert to_batch(to_entry(stored)) == stored


def test_replicas_appending_at_different_times_hold_byte_identical_logs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    logs = []
    for name, skew_s in (("leader", 0.0), ("follower", 7_200.0)):
        monkeypatch.undo()
        _clock_moves_by(monkeypatch, skew_s)
        log = PartitionLog.open(tmp_path / name, LogConfig(segment_bytes_max=1024,
                                                           batch_bytes_max=1024))
        for entry in _entries():
            log.append(to_batch(entry), term=entry.term, base_offset=entry.index)
        logs.append(log)
    leader, follower = logs
    assert committed_prefix_digest(leader, 5) == committed_prefix_digest(follower, 5)
    for log in logs:
        log.close()


def test_planted_wall_clock_control_batches_make_the_replica_digests_differ(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The defect re-injected (to_batch stamping control batches with the local clock, as it
    did): the digest comparison above then tells the two replicas apart."""
    real = raft_log.encode_control_batch

    def wall_clock(control_type, body, **kwargs):  # type: ignore[no-untyped-def]
        return real(control_type, body, timestamp_ms=int(time.time() * 1000), **kwargs)

    monkeypatch.setattr(raft_log, "encode_control_batch", wall_clock)
    digests = []
    for name, skew_s in (("leader", 0.0), ("follower", 7_200.0)):
        real_time = time.time
        monkeypatch.setattr(time, "time", lambda skew=skew_s, t=real_time: t() + skew)
        log = PartitionLog.open(tmp_path / name, LogConfig(segment_bytes_max=1024,
                                                           batch_bytes_max=1024))
        for entry in _entries():
            log.append(raft_log.to_batch(entry), term=entry.term, base_offset=entry.index)
        digests.append(committed_prefix_digest(log, 5))
        log.close()
        monkeypatch.setattr(time, "time", real_time)
    assert digests[0] != digests[1]
