"""The queue workload: consumers of one queue over the chaos topic, recorded for the queue checker.

Theory of operation. A queue run is the log workload (its idempotent acks=all producers send
unique, self-describing values to the topic and record every acknowledged send in
`history.jsonl`; its final read records every record of the topic) plus this: a queue over that
topic, `consumers` threads each with its own `QueueConsumer`, and a `QueueHistoryWriter`
(`queue-history.jsonl`, the same run clock). One producer implementation serves both, so the
log checker still judges the topic under the queue.

- **Consumers** receive up to `receive_max` messages, "process" them for a seeded few
  milliseconds, then settle each one by a seeded roll: ack, or nack (`nack_share`: redelivered
  after the queue's backoff), reject (`reject_share`: to the DLQ), release (`release_share`), or
  *late* (`late_share`: held past its lock deadline, then acked: the lock expired, so the ack is
  refused with LOCK_LOST when the record was redelivered meanwhile, accepted otherwise). Each
  delivery is recorded when `receive()` returns, each settlement once its outcome is known
  (`flush` answered: ok or LOCK_LOST; no answer within `request_timeout_s + 5`: unknown).
  A consumer whose receives fail `receive_failures_max` times in a row is closed and replaced by
  a new incarnation (new consumer id); its locks expire and others get the records.
- **Coordinator observer**: every second, who leads the queue's `__queue_state` partition
  (`xxh3_64(queue) % partitions`): the queue's coordinator, recorded on change.
- **Nemesis targets**: `nemesis_view()` is a `ClusterView` in which every partition's leader is
  the queue's coordinator (and its replicas the state partition's), so kill-leader, pause-leader,
  isolate-leader, power-cut-leader and power-cut-follower hit the node (or a follower of the
  group) that the queue's guarantees are about. The coordinator usually leads data partitions
  too; partitions of the other kinds (majority-minority, ...) pick their own victims anyway.
- **Drain** (after the heal and the final read): every consumer acks whatever it gets (late
  holds still run out) until the queue's stats show nothing left on any partition of the topic
  (depth 0, nothing dead-letter pending, everything up to the final read's high watermark read),
  bounded by `drain_s_max`. Then the consumers stop and the whole dead-letter topic is read from
  offset 0 to its high watermark, headers included (`DeadLetter` events).

Security (`chaos run --secure`): the queue consumers, the Admin calls, the observers and the
DLQ read all get the run's `ClientSecurity` (TLS, client certificate, SCRAM login).

Bounds: every loop has a deadline and a maximum count; each consumer holds at most
`receive_max` late messages at once (a late roll beyond that acks at once).
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tidelog.chaos.queue_history import (
    Action,
    DeadLetter,
    DlqRead,
    QueueCoordinator,
    QueueDelivery,
    QueueDrained,
    QueueHistory,
    QueueHistoryWriter,
    QueueSettlement,
    QueueStarted,
    SettleResult,
)
from tidelog.chaos.workload import ClusterView, Snapshot

if TYPE_CHECKING:  # the client is imported where it is used, as in workload.py
    from tidelog.client.queue import QueueConsumer, QueueMessage, SettleFuture
    from tidelog.client.queue_admin import QueueStats
    from tidelog.client.security import ClientSecurity
    from tidelog.proto.batch import Record

__all__ = ["QueueWorkload", "QueueWorkloadConfig", "create_queue"]

log = logging.getLogger(__name__)

QUEUE_STATE_TOPIC = "__queue_state"
_OBSERVE_INTERVAL_S = 1.0
_CREATE_S_MAX = 60.0
_DLQ_READ_S_MAX = 60.0
_FETCH_BYTES_MAX = 1 << 20
_FETCHES_MAX = 100_000
_LATE_AFTER_DEADLINE_MS = 300  # a late ack goes out this long after the lock expired
_SETTLE_SLACK_S = 5.0  # flush waits request_timeout_s plus this before calling outcomes unknown


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueWorkloadConfig:
    queue: str = "chaos-q"
    key_ordered: bool = False
    consumers: int = 4
    receive_max: int = 10
    receive_wait_s: float = 0.5
    process_ms_max: float = 20.0  # per received batch, seeded
    # Queue settings: short locks and backoffs, so expiries and retries happen within a run.
    lock_s: float = 4.0
    max_deliveries: int = 4
    backoff_initial_s: float = 0.2
    backoff_max_s: float = 2.0
    # Shares of deliveries settled otherwise than by an ack (seeded per consumer).
    nack_share: float = 0.08
    reject_share: float = 0.02
    release_share: float = 0.02
    late_share: float = 0.02
    request_timeout_s: float = 10.0
    receive_failures_max: int = 20
    drain_s_max: float = 90.0

    def __post_init__(self) -> None:
        if not self.queue or self.consumers < 1 or not 1 <= self.receive_max <= 1000:
            raise ValueError("queue workload: a queue name, >= 1 consumer, receive_max 1..1000")
        shares = (self.nack_share, self.reject_share, self.release_share, self.late_share)
        if any(s < 0 for s in shares) or sum(shares) > 0.5:
            raise ValueError("queue workload: shares must be >= 0 and leave most deliveries "
                             "acked (sum <= 0.5)")
        if self.lock_s <= 0 or self.max_deliveries < 1:
            raise ValueError("queue workload: lock_s > 0, max_deliveries >= 1")

    @property
    def name(self) -> str:
        """The `--workload` name that selects this configuration."""
        return "queue-key-ordered" if self.key_ordered else "queue"


@dataclass(frozen=True, slots=True, kw_only=True)
class CreatedQueue:
    topics: tuple[str, ...]
    key_ordered: bool
    max_deliveries: int
    lock_ms: int
    dlq_topic: str


def create_queue(bootstrap: Sequence[str], config: QueueWorkloadConfig,
                 topic: str, *, security: ClientSecurity | None = None) -> CreatedQueue:
    """Create the queue over `topic` (and its DLQ topic), retrying for up to a minute while the
    cluster settles; returns the effective configuration."""
    from tidelog.client import Admin, errors

    deadline = time.monotonic() + _CREATE_S_MAX
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with Admin(list(bootstrap), request_timeout_ms=10_000, security=security) as admin:
                info = admin.create_queue(
                    config.queue, [topic], key_ordered=config.key_ordered,
                    max_deliveries=config.max_deliveries, lock_s=config.lock_s,
                    backoff_initial_s=config.backoff_initial_s,
                    backoff_max_s=config.backoff_max_s, if_not_exists=True)
                admin.describe_topics([info.dead_letter_topic])  # it exists before we start
                return CreatedQueue(topics=tuple(info.topics), key_ordered=info.key_ordered,
                                    max_deliveries=info.max_deliveries, lock_ms=info.lock_ms,
                                    dlq_topic=info.dead_letter_topic)
        except errors.TidelogError as exc:
            last = exc
            time.sleep(0.5)
    raise RuntimeError(f"could not create queue {config.queue!r} within {_CREATE_S_MAX:.0f} s: "
                       f"{last}")


class CoordinatorView(ClusterView):
    """A `ClusterView` for the nemesis in which every partition is the queue's state partition:
    "the leader of partition p" is the queue's coordinator, its replicas the state group's."""

    def __init__(self, addresses: Mapping[str, str], queue: str, partitions: int, *,
                 security: ClientSecurity | None = None) -> None:
        super().__init__(addresses, QUEUE_STATE_TOPIC, security=security)
        self._queue = queue
        self._partitions = partitions

    def snapshot(self, topic: str | None = None) -> Snapshot:
        snap = super().snapshot(topic)
        if topic is not None:
            return snap
        p = state_partition(self._queue, snap)
        leaders = {} if p is None or p not in snap.leaders else {
            i: snap.leaders[p] for i in range(self._partitions)}
        replicas = {} if p is None or p not in snap.replicas else {
            i: snap.replicas[p] for i in range(self._partitions)}
        return Snapshot(leaders=leaders, metadata_leader=snap.metadata_leader,
                        answered=snap.answered, replicas=replicas)


def state_partition(queue: str, snap: Snapshot) -> int | None:
    """The queue's `__queue_state` partition (as node/queues does it), None before the topic
    is known."""
    import xxhash

    if not snap.leaders:
        return None
    count = max(snap.leaders) + 1
    return xxhash.xxh3_64_intdigest(queue.encode("utf-8")) % count


class QueueWorkload:
    """The queue consumers and the coordinator observer; `drain`, then `stop`, then
    `read_dead_letters`. Every method is bounded in time."""

    def __init__(self, config: QueueWorkloadConfig, created: CreatedQueue,
                 bootstrap: Sequence[str], addresses: Mapping[str, str], *, path: Path,
                 clock_ms: Callable[[], float], seed: int,
                 security: ClientSecurity | None = None) -> None:
        self.config = config
        self._security = security
        self.created = created
        self._bootstrap = list(bootstrap)
        self._addresses = dict(addresses)
        self.now_ms = clock_ms
        self._seed = seed
        self.writer = QueueHistoryWriter(path)
        self.stopping = threading.Event()
        self.draining = threading.Event()
        self._threads: list[threading.Thread] = []
        self._views: list[ClusterView] = []
        self.writer.append(QueueStarted(
            queue=config.queue, topics=created.topics, key_ordered=created.key_ordered,
            max_deliveries=created.max_deliveries, lock_ms=created.lock_ms,
            dlq_topic=created.dlq_topic, time_ms=clock_ms()))

    def nemesis_view(self, partitions: int) -> ClusterView:
        view = CoordinatorView(self._addresses, self.config.queue, partitions,
                               security=self._security)
        self._views.append(view)
        return view

    def start(self) -> None:
        self._threads = [threading.Thread(target=self._consume, args=(i,), daemon=True,
                                          name=f"chaos-queue-consumer-{i}")
                         for i in range(self.config.consumers)]
        self._threads.append(threading.Thread(target=self._observe, daemon=True,
                                              name="chaos-queue-observer"))
        for t in self._threads:
            t.start()

    def progress(self) -> str:
        return f"queue: delivered={self.writer.deliveries} acked={self.writer.acks}"

    def drain(self, high_watermarks: Mapping[int, int]) -> tuple[bool, str]:
        """Ack everything until the queue has nothing left on the topic's partitions (as far as
        the final read's high watermarks), or `drain_s_max` passed. Returns (drained, detail)."""
        from tidelog.client import Admin, errors

        self.draining.set()
        start = time.monotonic()
        deadline = start + self.config.drain_s_max
        detail = "no stats answered"
        drained = False
        with Admin(self._bootstrap, request_timeout_ms=5_000, security=self._security) as admin:
            while time.monotonic() < deadline:
                try:
                    stats = admin.describe_queue(self.config.queue).stats
                except errors.TidelogError as exc:
                    detail = f"describe_queue: {exc}"
                    time.sleep(0.5)
                    continue
                left = _left(stats, self.created.topics[0], high_watermarks)
                if not left:
                    drained = True
                    detail = (f"nothing left {time.monotonic() - start:.1f} s after the drain "
                              f"began (acked {stats.acked_total}, dead-lettered "
                              f"{stats.dead_lettered_total}, redelivered "
                              f"{stats.redelivered_total})")
                    break
                detail = "; ".join(left)
                time.sleep(0.5)
        if not drained:
            detail = f"not drained after {self.config.drain_s_max:.0f} s: {detail}"
        self.writer.append(QueueDrained(drained=drained, detail=detail[:2000],
                                        time_ms=self.now_ms()))
        return drained, detail

    def stop(self) -> None:
        """Stop the consumers (each settles what it still holds first) and the observer."""
        self.stopping.set()
        for t in self._threads:
            t.join(self.config.request_timeout_s + 15)
        for view in self._views:
            view.close()
        self._views.clear()

    def read_dead_letters(self) -> tuple[bool, str]:
        """Record every record of the DLQ topic (`DeadLetter`), then `DlqRead`."""
        from tidelog.client import Admin, errors

        topic = self.created.dlq_topic
        try:
            with Admin(self._bootstrap, request_timeout_ms=10_000,
                       security=self._security) as admin:
                partitions = len(admin.describe_topics([topic])[0].partitions)
        except errors.TidelogError as exc:
            detail = f"could not describe {topic}: {exc}"
            self.writer.append(DlqRead(topic=topic, partitions=0, complete=False, detail=detail,
                                       time_ms=self.now_ms()))
            return False, detail
        view = ClusterView(self._addresses, topic, security=self._security)
        records = 0
        try:
            for p in range(partitions):
                for r in _read_partition(view, self._addresses, topic, p):
                    self.writer.append(_dead_letter(p, r, self.now_ms()))
                    records += 1
        except TimeoutError as exc:
            detail = str(exc)
            self.writer.append(DlqRead(topic=topic, partitions=partitions, complete=False,
                                       detail=detail, time_ms=self.now_ms()))
            return False, detail
        finally:
            view.close()
        detail = f"{records} dead letters in {partitions} partitions of {topic}"
        self.writer.append(DlqRead(topic=topic, partitions=partitions, complete=True,
                                   detail=detail, time_ms=self.now_ms()))
        return True, detail

    def history(self) -> QueueHistory:
        return self.writer.history()

    def close(self) -> None:
        self.stopping.set()
        for view in self._views:
            view.close()
        self._views.clear()
        self.writer.close()

    # --- threads --------------------------------------------------------------------------------

    def _consume(self, index: int) -> None:
        from tidelog.client import QueueConsumer, errors

        cfg = self.config
        rng = random.Random(f"{self._seed}/queue-consumer/{index}")
        for incarnation in range(1000):
            if self.stopping.is_set():
                return
            cid = f"q{index}.{incarnation}"
            try:
                consumer = QueueConsumer(self._bootstrap, queue=cfg.queue, consumer_id=cid,
                                         request_timeout_s=cfg.request_timeout_s,
                                         security=self._security)
            except errors.TidelogError as exc:
                log.info("queue consumer %s: %s", cid, exc)
                self.stopping.wait(0.5)
                continue
            try:
                _ConsumerLoop(self, consumer, cid, rng).run()
            finally:
                with contextlib.suppress(errors.TidelogError):
                    consumer.close(timeout_s=5)

    def _observe(self) -> None:
        view = ClusterView(self._addresses, QUEUE_STATE_TOPIC, security=self._security)
        last: object = ()
        try:
            for _ in range(1_000_000):
                snap = view.snapshot()
                p = state_partition(self.config.queue, snap)
                node = snap.leaders.get(p, (None, 0))[0] if p is not None else None
                if node != last:
                    last = node
                    self.writer.append(QueueCoordinator(node=node, time_ms=self.now_ms()))
                if self.stopping.wait(_OBSERVE_INTERVAL_S):
                    return
        finally:
            view.close()


@dataclass(slots=True)
class _Held:
    message: QueueMessage
    delivery: int
    due_wall_ms: int


class _ConsumerLoop:
    """One consumer incarnation: receive, decide, settle, record. Ends when the workload stops
    (after settling what it holds) or after too many failed receives in a row."""

    def __init__(self, workload: QueueWorkload, consumer: QueueConsumer, cid: str,
                 rng: random.Random) -> None:
        self.w = workload
        self.consumer = consumer
        self.cid = cid
        self.rng = rng
        self.deliveries = 0
        self.held: list[_Held] = []

    def run(self) -> None:
        from tidelog.client import errors

        cfg = self.w.config
        failures = 0
        while not self.w.stopping.is_set():
            invoked = self.w.now_ms()
            try:
                messages = self.consumer.receive(
                    max_messages=cfg.receive_max, timeout_s=cfg.receive_wait_s)
                failures = 0
            except errors.TidelogError as exc:
                failures += 1
                log.info("queue consumer %s: receive: %s", self.cid, exc)
                if failures >= cfg.receive_failures_max:
                    self._settle_due(force=True)
                    return
                self.w.stopping.wait(0.2)
                self._settle_due(force=False)
                continue
            wall_ms = time.time_ns() // 1_000_000
            now = self.w.now_ms()
            todo: list[tuple[QueueMessage, int, Action]] = []
            for m in messages:
                n = self._record_delivery(m, invoked, now, wall_ms)
                action = self._decide(m, n)
                if action is not None:
                    todo.append((m, n, action))
            if todo and cfg.process_ms_max > 0:
                time.sleep(self.rng.uniform(0, cfg.process_ms_max) / 1000)
            self._settle(todo)
            self._settle_due(force=False)
        self._settle_due(force=True)

    def _record_delivery(self, m: QueueMessage, invoked: float, now: float, wall_ms: int) -> int:
        n = self.deliveries
        self.deliveries += 1
        self.w.writer.append(QueueDelivery(
            consumer=self.cid, delivery=n, topic=m.topic, partition=m.partition,
            offset=m.offset, key=_text(m.key), value=_text(m.value) or "",
            delivery_count=m.delivery_count, lock_deadline_ms=m.lock_deadline_ms,
            received_wall_ms=wall_ms, receive_invoked_ms=invoked, time_ms=now))
        return n

    def _decide(self, m: QueueMessage, n: int) -> Action | None:
        """The seeded settlement for one delivery; None: held late (settled after its lock)."""
        cfg = self.w.config
        roll = self.rng.random()
        if self.w.draining.is_set():
            return Action.ACK
        edges = ((cfg.nack_share, Action.NACK), (cfg.reject_share, Action.REJECT),
                 (cfg.release_share, Action.RELEASE))
        for share, action in edges:
            if roll < share:
                return action
            roll -= share
        if roll < cfg.late_share and len(self.held) < cfg.receive_max:
            self.held.append(_Held(m, n, m.lock_deadline_ms + _LATE_AFTER_DEADLINE_MS))
            return None
        return Action.ACK

    def _settle_due(self, *, force: bool) -> None:
        wall_ms = time.time_ns() // 1_000_000
        due = [h for h in self.held if force or h.due_wall_ms <= wall_ms]
        if not due:
            return
        self.held = [h for h in self.held if h not in due]
        self._settle([(h.message, h.delivery, Action.ACK) for h in due])

    def _settle(self, todo: list[tuple[QueueMessage, int, Action]]) -> None:
        from tidelog.client import errors

        if not todo:
            return
        c = self.consumer
        pending = []
        for m, n, action in todo:
            invoked = self.w.now_ms()
            try:
                match action:
                    case Action.ACK:
                        future = c.ack(m)
                    case Action.NACK:
                        future = c.nack(m)
                    case Action.REJECT:
                        future = c.reject(m, reason="chaos reject")
                    case Action.RELEASE:
                        future = c.release(m)
            except errors.TidelogError as exc:  # not queued (closed): nothing was sent
                log.info("queue consumer %s: %s not queued: %s", self.cid, action.value, exc)
                continue
            pending.append((m, n, action, invoked, future))
        with contextlib.suppress(errors.TidelogError):
            c.flush(timeout_s=self.w.config.request_timeout_s + _SETTLE_SLACK_S)
        for m, n, action, invoked, future in pending:
            result, error = _outcome(future)
            self.w.writer.append(QueueSettlement(
                consumer=self.cid, delivery=n, topic=m.topic, partition=m.partition,
                offset=m.offset, delivery_count=m.delivery_count, action=action,
                result=result, error=error, invoked_ms=invoked, time_ms=self.w.now_ms()))


def _outcome(future: SettleFuture) -> tuple[SettleResult, str]:
    from tidelog.client import errors

    if not future.done():
        return SettleResult.UNKNOWN, "not answered in time"
    error = future.exception(0)
    if error is None:
        return SettleResult.OK, ""
    if isinstance(error, errors.LockLostError):
        return SettleResult.LOCK_LOST, str(error)[:200]
    return SettleResult.UNKNOWN, f"{type(error).__name__}: {error}"[:200]


def _left(stats: QueueStats, topic: str, high_watermarks: Mapping[int, int]) -> list[str]:
    """What keeps the queue from being drained (empty: drained)."""
    left = []
    by_partition = {p.partition: p for p in stats.partitions if p.topic == topic}
    for partition, hw in sorted(high_watermarks.items()):
        p = by_partition.get(partition)
        if p is None:
            left.append(f"p{partition}: no stats")
        elif p.depth or p.in_flight or p.waiting or p.dead_letter_pending or p.read_offset < hw:
            left.append(f"p{partition}: depth {p.depth}, in flight {p.in_flight}, waiting "
                        f"{p.waiting}, dead-letter pending {p.dead_letter_pending}, read "
                        f"{p.read_offset}/{hw}")
    if stats.depth and not left:
        left.append(f"depth {stats.depth}")
    return left


def _read_partition(view: ClusterView, addresses: Mapping[str, str], topic: str,
                    partition: int) -> list[Record]:
    """Every record (headers included) of one partition, offset 0 to the high watermark, from
    its leader (dialled with the view's security); retried from scratch on any error for up to
    a minute."""
    import grpc
    from tidelog.client import errors

    deadline = time.monotonic() + _DLQ_READ_S_MAX
    last_error = "no leader"
    while time.monotonic() < deadline:
        leader = view.snapshot().leaders.get(partition, (None, 0))[0]
        if leader is None:
            time.sleep(0.3)
            continue
        try:
            return _fetch_all(addresses[leader], topic, partition, view.security)
        except (grpc.RpcError, errors.TidelogError, _Refused) as exc:
            last_error = str(exc)[:300]
            time.sleep(0.3)
    raise TimeoutError(f"read of {topic}-{partition} failed for {_DLQ_READ_S_MAX:.0f} s: "
                       f"{last_error}")


class _Refused(Exception):
    pass


def _fetch_all(address: str, topic: str, partition: int,
               security: ClientSecurity | None) -> list[Record]:
    from tidelog.client.security import make_channel
    from tidelog.proto import broker_pb2 as pb
    from tidelog.proto import broker_pb2_grpc
    from tidelog.proto.batch import decode_records, iter_batches

    records: list[Record] = []
    offset = 0
    with make_channel(address, (), security) as channel:
        stub = broker_pb2_grpc.BrokerStub(channel)
        for _ in range(_FETCHES_MAX):
            reply = stub.Fetch(pb.FetchRequest(partitions=[pb.FetchPartition(
                topic=topic, partition=partition, offset=offset, max_bytes=_FETCH_BYTES_MAX)],
                max_wait_ms=0), timeout=10)
            part = reply.partitions[0]
            if part.error != pb.NONE:
                raise _Refused(f"{address}: {pb.ErrorCode.Name(part.error)} "
                               f"{part.error_message}")
            if not part.batches:
                if offset < part.high_watermark:
                    raise _Refused(f"{address}: no batches at {offset} below hw "
                                   f"{part.high_watermark}")
                return records
            for pos, header in iter_batches(part.batches):
                if header.last_offset >= offset and not header.is_control:
                    records += [r for r in decode_records(part.batches[pos:pos + header.size])
                                if r.offset >= offset]
                offset = max(offset, header.last_offset + 1)
    raise _Refused(f"read of {topic}-{partition}: over {_FETCHES_MAX} fetches")


def _dead_letter(partition: int, r: Record, now_ms: float) -> DeadLetter:
    headers = {k: v for k, v in r.headers}

    def text(name: str) -> str:
        value = headers.get(name)
        return "" if value is None else value.decode("utf-8", errors="replace")

    def number(name: str) -> int:
        value = text(name)
        return int(value) if value.isdigit() else -1

    return DeadLetter(partition=partition, offset=r.offset, key=_text(r.key),
                      value=_text(r.value) or "", reason=text("tidelog-dlq-reason"),
                      attempts=number("tidelog-dlq-attempts"),
                      source_topic=text("tidelog-dlq-source-topic"),
                      source_partition=number("tidelog-dlq-source-partition"),
                      source_offset=number("tidelog-dlq-source-offset"), time_ms=now_ms)


def _text(data: bytes | None) -> str | None:
    return None if data is None else data.decode("utf-8", errors="replace")
