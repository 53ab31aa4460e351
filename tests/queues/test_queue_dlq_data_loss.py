"""A dead-letter partition that lost the tail of its log (issue 12): its idempotent-producer
check then expects a sequence below the queue's next pending batch and refuses that batch with
OUT_OF_ORDER_SEQUENCE, every time. Before, the batch stayed pending (retried with a warning)
forever. Now the refusal is read (`expected_sequence`), the partition's pending batches are
planned again from the sequence it expects (`QueueCore.dlq_resync`), and the loss is counted
(stats `dead_letters_lost_total`, durable). The DLQ leader here is the real
node/producer_state.ProducerStateTable, rebuilt from the headers that survived (what a node does
when it opens a log); the queue side is the real core, replayed through its deltas."""

from __future__ import annotations

import pytest
from tidelog.client.queue_admin import stats_info
from tidelog.node.errors import OutOfOrderSequenceError
from tidelog.node.metrics.queues import families
from tidelog.node.producer_state import ProducerStateTable
from tidelog.node.queues import deltas as dl
from tidelog.node.queues.core import QueueCore
from tidelog.node.queues.dead_letters import expected_sequence
from tidelog.node.queues.model import DlqBatchJob, QueueStats
from tidelog.node.queues.wire import stats_to_wire
from tidelog.proto import queue_pb2 as qpb
from tidelog.proto.batch import BatchHeader, decode_header, encode_batch

from .core_builders import T0
from .test_queue_core_dlq import DLQ, _dead, _replayed, make

PID, EPOCH = 9, 0


def _assert_lost_is_shown(stats: QueueStats, lost: int) -> None:
    """The count reaches users: DescribeQueue's stats on the wire (serialized and parsed), the
    client's QueueStats and its JSON form (`tidelog queue stats --output json`), and the
    coordinator's `tidelog_queue_dead_letters_lost_total` series."""
    wire = qpb.QueueStats.FromString(stats_to_wire(stats).SerializeToString())
    assert wire.dead_letters_lost_total == lost
    assert stats_info(wire).to_dict()["dead_letters_lost_total"] == lost
    samples = {(s.name, s.labels["queue"]): s.value
               for family in families({"q": stats}) for s in family.samples}
    assert samples[("tidelog_queue_dead_letters_lost_total", "q")] == lost


def _header(batch: DlqBatchJob, base_offset: int) -> BatchHeader:
    """The batch as write_dlq_batch encodes it: its records, the producer, its sequence."""
    data = encode_batch([(None, b"letter", (), T0)] * len(batch.jobs), producer_id=PID,
                        producer_epoch=EPOCH, base_sequence=batch.base_sequence,
                        base_offset=base_offset)
    return decode_header(data)


def _write(table: ProducerStateTable, log: list[BatchHeader], batch: DlqBatchJob) -> None:
    header = _header(batch, sum(h.record_count for h in log))
    assert table.check(header) is None
    table.record(header, header.base_offset)
    log.append(header)


def test_a_partition_that_lost_its_tail_is_resynced_and_the_loss_counted() -> None:
    core = make()
    _dead(core, range(6))
    core.set_dlq_producer(PID, EPOCH)
    table, log = ProducerStateTable(), []
    for offsets in ((0, 1), (2, 3)):              # two batches written and done
        core.plan_dlq_batch(DLQ, 0, [(core.partitions[0], o) for o in offsets])
        (batch,) = core.dlq_batches()
        _write(table, log, batch)
        core.dlq_batch_done(batch, written=True)
    core.plan_dlq_batch(DLQ, 0, [(core.partitions[0], o) for o in (4, 5)])
    (pending,) = core.dlq_batches()
    assert pending.base_sequence == 4
    # The DLQ partition loses its second batch (the log tail): rebuilt from what is left.
    del log[1:]
    table.clear()
    for h in log:
        table.record(h, h.base_offset)
    with pytest.raises(OutOfOrderSequenceError) as refused:
        table.check(_header(pending, 2))
    assert expected_sequence(refused.value) == 2   # the real refusal, read
    base = core.snapshot()
    deltas = core.dlq_resync(DLQ, 0, 2)
    assert deltas == [dl.DlqResync(dlq_topic=DLQ, dlq_partition=0, next_sequence=2, lost=2)]
    replayed = _replayed(core, base, deltas)
    for queue in (core, replayed, QueueCore.restore(core.snapshot())):
        assert queue.dlq_batches() == []
        assert [j.offset for j in queue.dead_letter_jobs()] == [4, 5]   # pending again
        assert queue.counters["dlq_lost"] == 2
        assert queue.stats(T0, {}).dead_letters_lost_total == 2
    _assert_lost_is_shown(core.stats(T0, {}), 2)
    # Planned again from the sequence the partition expects: accepted, appended once.
    core.plan_dlq_batch(DLQ, 0, [(core.partitions[0], o) for o in (4, 5)])
    (again,) = core.dlq_batches()
    assert again.base_sequence == 2
    _write(table, log, again)
    core.dlq_batch_done(again, written=True)
    assert core.start_offset(core.partitions[0]) == 6
    # 6 were dead-lettered (acknowledged by the DLQ), 2 of them lost there afterwards
    assert core.counters["dead_lettered"] == 6 and not core.has_dead_letter_work()


def test_only_a_gap_below_the_pending_batch_is_read_as_data_loss() -> None:
    """Another refusal (a new epoch not starting at 0) says nothing about the sequence; and
    a snapshot of the previous format (no dlq_lost counter) restores with it at 0."""
    table = ProducerStateTable()
    first = decode_header(encode_batch([(None, b"v", (), T0)], producer_id=1, producer_epoch=0,
                                       base_sequence=0))
    table.record(first, 0)
    with pytest.raises(OutOfOrderSequenceError) as refused:
        table.check(decode_header(encode_batch([(None, b"v", (), T0)], producer_id=1,
                                               producer_epoch=1, base_sequence=3)))
    assert expected_sequence(refused.value) is None
    core = make()
    snap = core.snapshot()
    snap["counters"].pop("dlq_lost")
    assert QueueCore.restore(snap).counters["dlq_lost"] == 0
