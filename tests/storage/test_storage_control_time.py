"""Raft control batches carry NO_TIMESTAMP (their bytes must not depend on a replica's clock):
the time index, offset-for-timestamp lookups and time retention pass over them and still answer
as if only the data batches had timestamps."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import pytest
from storage_helpers import Clock, make_batch, small_config
from tidelog.node.storage import PartitionLog
from tidelog.proto.batch import NO_TIMESTAMP, ControlType, encode_control_batch

CONFIG = small_config(segment_bytes_max=1024, batch_bytes_max=1024, index_interval_bytes=128)


def _noop() -> bytes:
    return encode_control_batch(ControlType.RAFT_NOOP, b"")


def _wall_clock_noop() -> bytes:
    """Planted bug (the old to_batch): a control batch stamped with a replica's wall clock."""
    return encode_control_batch(ControlType.RAFT_NOOP, b"", timestamp_ms=1_764_547_200_000)


def _build(directory: Path, rng: random.Random, noop: Callable[[], bytes] = _noop
           ) -> tuple[PartitionLog, list[tuple[int, int]]]:
    """Data batches with rising (sometimes equal) timestamps, control batches between them, over
    several segments. Returns the log and (base offset, max timestamp) of each data batch."""
    log = PartitionLog.open(directory, CONFIG, now_ms=Clock())
    data: list[tuple[int, int]] = []
    ts = 10_000
    for i in range(60):
        if rng.random() < 0.4:
            log.append(noop(), term=1)
        ts += rng.choice([0, 1, 50, 1_000])
        info = log.append(make_batch(records=rng.randint(1, 3), timestamp_ms=ts, tag=i), term=1)
        data.append((info.base_offset, info.max_timestamp_ms))
    log.append(noop(), term=1)  # the log ends with a control batch
    return log, data


def _oracle(data: list[tuple[int, int]], ts: int) -> int | None:
    """The dumb answer: the first data batch whose max timestamp reaches ts."""
    return next((base for base, max_ts in data if max_ts >= ts), None)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_offset_for_timestamp_answers_as_if_control_batches_were_absent(tmp_path: Path,
                                                                       seed: int) -> None:
    rng = random.Random(seed)
    log, data = _build(tmp_path / "p", rng)
    assert len(log.segment_base_offsets) >= 4
    probes = sorted({0, 9_999, *(t for _, t in data), *(t + 1 for _, t in data),
                     data[-1][1] + 10**9})
    for _reopened in (False, True):  # in-memory indexes, then the sealed segments' index files
        for ts in probes:
            assert log.offset_for_timestamp(ts) == _oracle(data, ts), (seed, ts)
        log.close()
        log = PartitionLog.open(tmp_path / "p", CONFIG, now_ms=Clock())
    log.close()


def test_planted_wall_clock_control_batches_are_caught_by_the_oracle(tmp_path: Path) -> None:
    log, data = _build(tmp_path / "p", random.Random(1), _wall_clock_noop)
    after_last = data[-1][1] + 1
    assert _oracle(data, after_last) is None
    assert log.offset_for_timestamp(after_last) is not None, "the planted bug went unseen"
    log.close()


def test_a_segment_of_only_control_batches_has_no_time_and_retention_keeps_the_order(
        tmp_path: Path) -> None:
    """A sealed segment holding only control batches has max timestamp NO_TIMESTAMP: it is no
    younger than the data before it, so time retention deletes it with the old data in front of
    it, and stops at the first segment whose data is young."""
    clock = Clock(now_ms=1_000_000)
    log = PartitionLog.open(tmp_path / "p", small_config(segment_bytes_max=1024,
                                                         batch_bytes_max=1024,
                                                         retention_ms=10_000), now_ms=clock)
    old = log.append(make_batch(timestamp_ms=100_000), term=1)
    log._roll()
    noop = log.append(_noop(), term=1)
    log._roll()
    young = log.append(make_batch(timestamp_ms=995_000), term=1)
    log._roll()
    log.append(_noop(), term=1)
    summaries = {s.base_offset: s.max_timestamp_ms for s in log._segments}
    assert summaries[noop.base_offset] == NO_TIMESTAMP
    assert summaries[young.base_offset] == 995_000
    assert log.apply_retention(clock.now_ms) == [old.base_offset, noop.base_offset]
    assert log.log_start_offset == young.base_offset
    log.close()
