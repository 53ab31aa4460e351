"""Dead-lettering for the queue coordinator: each queue's batches, planned, written, done.

The protocol is in node/queues/dlq_ledger.py (deterministic batches) and the writes in
dead_letters.py; this is the loop one coordinator runs for a queue (a task started by its tick
when the core has dead-letter work): write the pending batches in order, each committed as done
once the DLQ partition acknowledged it, then plan new batches from the dead-letter jobs (the
queue's DLQ producer first, once). Every state change goes through the coordinator's `write`
(one Raft write, committed before the next step).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from tidelog.node import errors as E
from tidelog.node.metadata import MetadataState
from tidelog.node.metadata_commands import Command, InitProducer
from tidelog.node.metadata_service import raise_result
from tidelog.node.producer_state import SEQUENCE_MODULUS
from tidelog.node.queues.config import QueueConfig
from tidelog.node.queues.dead_letters import (
    Writer,
    expected_sequence,
    load_sources,
    plan_chunks,
    write_dlq_batch,
)
from tidelog.node.queues.dlq_ledger import BATCH_RECORDS_MAX, PENDING_BATCHES_MAX
from tidelog.node.queues.model import DlqBatchJob
from tidelog.node.queues.reader import PartitionReader
from tidelog.node.topics import effective_configs

__all__ = ["DLQ_HELD_RETRY_S", "DLQ_PLAN_JOBS_MAX", "DLQ_PRODUCER_PREFIX", "DLQ_RETRY_S",
           "DeadLetterDriver", "compacted_topic_problem"]

log = logging.getLogger(__name__)

DLQ_RETRY_S = 1.0             # after a failed round, the next one waits this long
DLQ_PRODUCER_PREFIX = "__queue-dlq/"  # + queue name: the transactional id of its DLQ producer
DLQ_PLAN_JOBS_MAX = 2_000     # dead-letter jobs read and planned into batches per round
DLQ_HELD_RETRY_S = 10.0       # a compacted dead-letter topic is looked at again this often


def compacted_topic_problem(state: MetadataState, topic: str) -> str:
    """Why `topic` cannot take dead letters, or "": a compacted topic (cleanup.policy compact
    or compact,delete) keeps only the newest record per key, so the cleaner would drop every
    earlier dead letter whose source record had the same key (and exactly-once rests on the
    queue's batches staying in the DLQ log)."""
    info = state.topics.get(topic)
    if info is None:
        return ""
    policy = effective_configs(info.configs)["cleanup.policy"]
    if "compact" not in policy.split(","):
        return ""
    return (f"dead-letter topic {topic!r} has cleanup.policy={policy}: compaction would drop "
            "dead letters that share a key; use a topic with cleanup.policy=delete")

Write = Callable[[Any, Any, Sequence[Any]], Awaitable[None]]   # (entry, queue, deltas)


class DriverHost(Protocol):
    @property
    def state(self) -> MetadataState: ...

    async def propose(self, command: Command, timeout_s: float = ...) -> dict[str, Any]: ...


class DeadLetterDriver:
    """`run(entry, queue)`: one round of a queue's dead-letter work. `queue` is the
    coordinator's queue record (name, core, deleted, dlq_retry_at, notify()); `entry` its
    state partition, handed back to `write` untouched."""

    def __init__(self, host: DriverHost, reader: PartitionReader, writer: Writer, write: Write,
                 ensure_dlq_topic: Callable[[QueueConfig], Awaitable[None]]) -> None:
        self._host = host
        self._reader = reader
        self._writer = writer
        self._write = write
        self._ensure_dlq_topic = ensure_dlq_topic

    async def run(self, entry: Any, queue: Any) -> None:
        """Write the pending dead-letter batches in order, then plan new ones from the jobs
        (node/queues/dlq_ledger.py): each batch is committed before it is written, and marked
        done after, so any coordinator can write it again and it still lands once."""
        try:
            while not queue.deleted:
                batches = queue.core.dlq_batches()
                topic = batches[0].dlq_topic if batches else queue.core.config.dlq_topic
                problem = compacted_topic_problem(self._host.state, topic)
                if problem:
                    # Made compacted after the queue was created (create and alter refuse
                    # it): the letters stay dead-letter pending (stats) until it is not.
                    queue.dlq_retry_at = time.monotonic() + DLQ_HELD_RETRY_S
                    log.warning("queue %s: %d dead letters held: %s", queue.name,
                                len(queue.core.dead_letter_jobs())
                                + sum(len(b.jobs) for b in batches), problem)
                    return
                if batches:
                    if not await self._write_batch(entry, queue, batches[0]):
                        return
                elif not queue.core.dead_letter_jobs() or not await self._plan(entry, queue):
                    return
        except asyncio.CancelledError:
            raise
        except E.BrokerError as exc:
            queue.dlq_retry_at = time.monotonic() + DLQ_RETRY_S
            log.warning("queue %s: dead letters not written yet: %s", queue.name, exc.message)
        except Exception:
            queue.dlq_retry_at = time.monotonic() + DLQ_RETRY_S
            log.exception("queue %s: dead-letter job failed", queue.name)

    async def _plan(self, entry: Any, queue: Any) -> bool:
        """Commit dead-letter batches for the pending jobs (the DLQ producer first, once per
        queue). False when nothing could be planned (every DLQ partition has its maximum of
        batches pending)."""
        config = queue.core.config
        dlq = self._host.state.topics.get(config.dlq_topic)
        if dlq is None:
            await self._ensure_dlq_topic(config)
            dlq = self._host.state.topics.get(config.dlq_topic)
            if dlq is None:
                raise E.UnknownTopicError(f"dead-letter topic {config.dlq_topic!r} is missing")
        if queue.core.dlq_producer is None:
            producer_id, epoch = await self._allocate_producer(queue.name)
            if queue.deleted or queue.core.dlq_producer is not None:
                return True
            await self._write(entry, queue, queue.core.set_dlq_producer(producer_id, epoch))
        sources = await load_sources(self._reader, queue.core.dead_letter_jobs()[
            :DLQ_PLAN_JOBS_MAX])
        if queue.deleted or queue.core.config.dlq_topic != dlq.name:
            return not queue.deleted
        # Synchronous from here to the proposal: the jobs as they are now.
        by_partition: dict[int, list[Any]] = {}
        for job in queue.core.dead_letter_jobs()[:DLQ_PLAN_JOBS_MAX]:
            by_partition.setdefault(job.tp.partition % dlq.partitions, []).append(job)
        deltas: list[Any] = []
        for p, jobs in sorted(by_partition.items()):
            room = PENDING_BATCHES_MAX - queue.core.dlq_pending_count(dlq.name, p)
            for chunk in plan_chunks(jobs, sources, BATCH_RECORDS_MAX)[:max(0, room)]:
                deltas.extend(queue.core.plan_dlq_batch(
                    dlq.name, p, [(j.tp, j.offset) for j in chunk]))
        if not deltas:
            return False
        await self._write(entry, queue, deltas)
        return True

    async def _write_batch(self, entry: Any, queue: Any, batch: DlqBatchJob) -> bool:
        """Write one committed batch (again, maybe: idempotent) and commit it as done. A batch
        whose dead-letter topic is gone (and is no longer the queue's) is abandoned: its records
        are planned again for the current topic."""
        config = queue.core.config
        if batch.dlq_topic not in self._host.state.topics:
            if batch.dlq_topic == config.dlq_topic:
                await self._ensure_dlq_topic(config)
            else:
                log.warning("queue %s: dead-letter topic %s is gone; %d dead letters pending "
                            "for it go to %s instead", queue.name, batch.dlq_topic,
                            len(batch.jobs), config.dlq_topic)
                last = [b for b in queue.core.dlq_batches()
                        if (b.dlq_topic, b.dlq_partition) == (batch.dlq_topic,
                                                              batch.dlq_partition)][-1]
                await self._write(entry, queue, queue.core.dlq_batch_done(last, written=False))
                return True
        producer = queue.core.dlq_producer
        assert producer is not None, "a dead-letter batch without the queue's producer"
        try:
            response = await write_dlq_batch(reader=self._reader, writer=self._writer,
                                             queue=queue.name, producer=producer, batch=batch)
        except E.OutOfOrderSequenceError as exc:
            return await self._resync(entry, queue, batch, exc)
        pending = queue.core.dlq_batches()
        if queue.deleted or not pending or pending[0] != batch:
            return False  # dropped meanwhile; whoever holds the queue now writes it again
        log.debug("queue %s: dead-letter batch %s-%d sequence %d at offset %d%s", queue.name,
                  batch.dlq_topic, batch.dlq_partition, batch.base_sequence,
                  response.base_offset, " (a copy was there already)" if response.duplicate
                  else "")
        await self._write(entry, queue, queue.core.dlq_batch_done(batch, written=True))
        queue.notify()
        return True

    async def _resync(self, entry: Any, queue: Any, batch: DlqBatchJob,
                      exc: E.OutOfOrderSequenceError) -> bool:
        """The DLQ partition refused the first pending batch's sequence. By the protocol the
        only way it expects an earlier one is that it lost batches it had acknowledged (the tail
        of its log: an unclean loss of its replicas' data), so waiting would keep the batch
        pending forever: its letters are planned again from the sequence it expects (resync),
        and the loss is logged and counted (stats: dead_letters_lost_total). Anything else is
        raised again (retried later, with a warning)."""
        expected = expected_sequence(exc)
        base = batch.base_sequence
        if expected is None:
            raise exc
        lost = (base - expected) % SEQUENCE_MODULUS
        pending = queue.core.dlq_batches()
        if queue.deleted or not pending or pending[0] != batch or not 0 < lost <= base:
            raise exc
        await self._write(entry, queue, queue.core.dlq_resync(
            batch.dlq_topic, batch.dlq_partition, base - lost))
        log.error("queue %s: dead-letter partition %s-%d lost %d dead letters it had "
                  "acknowledged (it expects sequence %d, the queue had written up to %d: its "
                  "log lost data); the %d pending letters there are written again from "
                  "sequence %d", queue.name, batch.dlq_topic, batch.dlq_partition, lost,
                  expected, base - 1, len(queue.core.dead_letter_jobs()), base - lost)
        return True

    async def _allocate_producer(self, queue: str) -> tuple[int, int]:
        """The queue's dead-letter producer (id, epoch): InitProducerId once per queue, kept in
        its durable state (SetDlqProducer) and never bumped by a takeover. (Allocated again
        only if the coordinator died before committing it: no batch used it then. A queue
        deleted and created again gets a new epoch, which fences the old one's writers.)"""
        result = await self._host.propose(InitProducer(
            transactional_id=f"{DLQ_PRODUCER_PREFIX}{queue}"))
        raise_result(result)
        return result["producer_id"], result["producer_epoch"]
