"""The chaos workload: producers, a consumer, a leader observer and the final read, all recorded.

Theory of operation. Everything the clients do and see goes into one `Recorder` (a thread-safe
`HistoryWriter` with the run's monotonic clock); the checker judges that history afterwards and
never talks to the cluster (STYLE habit 16).

- **Producers** (`producers` threads, one `Producer` each: acks=all, idempotent) send unique,
  self-describing values (`encode_value(producer, seq)`) under `keys` keys, at a fixed total rate,
  recording `send_invoked` before each `send` and the outcome from the delivery callback. Outcomes
  are mapped by what the client knows (`classify_error`): an error raised by `send()` itself means
  nothing was queued (definite failure); a broker rejection of the batch's content (invalid, too
  large) is definite, since every attempt would be rejected alike; everything else — timeouts,
  lost connections, leadership changes, a delivery deadline, a batch abandoned behind a failed one
  — may have been written by an earlier attempt and is *indeterminate*.
- **Consumers**: one manual-assignment `Consumer` reading every partition from the start; after a
  client error it is replaced by a new incarnation (new consumer id) resuming after the last
  record it recorded. And `group_consumers` members of consumer group `chaos-group` (subscribe,
  earliest, manual commits): each commits what it read every `group_commit_interval_s` and
  records `group_commit` once the commit returned; every assignment change starts a new consumer
  id, so a re-read after a rebalance is not mistaken for a consumer going backwards.
- **Leader observer**: asks every node for Metadata twice a second; per partition the leader with
  the highest term wins; a change is recorded as `leader_observed`.
- **Final read**: after the faults healed and producers stopped, every partition is read from
  offset 0 to the high watermark with raw Fetch calls to its current leader.
- **Security** (`chaos run --secure`): every client above, the observer's channels and the final
  read's get the run's `ClientSecurity` (TLS, a client certificate, a SCRAM login); the raw
  channels are made by the client's own `make_channel`, as every client's are.

Bounds: every loop stops at its deadline and after a maximum count; each producer keeps at most
`inflight_max` unresolved sends (it waits instead of queueing more).
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tidelog.chaos.history import (
    ConsumerRead,
    Event,
    FinalRead,
    FinalRecord,
    GroupCommit,
    HistoryWriter,
    LeaderObserved,
    SendFailed,
    SendIndeterminate,
    SendInvoked,
    SendOk,
    encode_value,
)

if TYPE_CHECKING:
    from tidelog.client.security import ClientSecurity

__all__ = [
    "ClusterView",
    "Recorder",
    "Snapshot",
    "Workload",
    "WorkloadConfig",
    "classify_error",
    "final_read",
]

log = logging.getLogger(__name__)

GROUP = "chaos-group"
_POLL_S = 0.5
_OBSERVE_INTERVAL_S = 0.5
_FINAL_READ_S_MAX = 90.0
_FETCH_BYTES_MAX = 1 << 20
_FINAL_FETCHES_MAX = 100_000


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkloadConfig:
    topic: str = "chaos"
    partitions: int = 6
    replication_factor: int = 3
    producers: int = 3
    keys: int = 60
    rate_per_s: float = 200.0  # total, over all producers
    value_bytes: int = 100
    inflight_max: int = 2000  # per producer: unresolved sends before it waits
    request_timeout_ms: int = 10_000
    delivery_timeout_ms: int = 30_000
    group_consumers: int = 2  # members of one consumer group, committing every second
    group_commit_interval_s: float = 1.0

    def __post_init__(self) -> None:
        if not (self.partitions >= 1 and self.producers >= 1 and self.keys >= 1):
            raise ValueError("partitions, producers and keys must be >= 1")
        if not 0 < self.rate_per_s <= 20_000:
            raise ValueError("rate_per_s must be in (0, 20000]")
        if self.delivery_timeout_ms < self.request_timeout_ms + 100:
            raise ValueError("delivery_timeout_ms must exceed request_timeout_ms")


# --- recording ----------------------------------------------------------------------------------


class Recorder:
    """Thread-safe history writer plus live counters for the progress line."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._writer = HistoryWriter(path)
        self._lock = threading.Lock()
        self._clock = clock
        self._t0 = clock()
        self.invoked = self.ok = self.failed = self.indeterminate = self.reads = 0

    def now_ms(self) -> float:
        return (self._clock() - self._t0) * 1000.0

    def append(self, event: Event) -> None:
        with self._lock:
            self._writer.append(event)
            match event:
                case SendInvoked():
                    self.invoked += 1
                case SendOk():
                    self.ok += 1
                case SendFailed():
                    self.failed += 1
                case SendIndeterminate():
                    self.indeterminate += 1
                case ConsumerRead():
                    self.reads += 1

    def history(self):  # noqa: ANN201 - History
        with self._lock:
            return self._writer.history()

    def close(self) -> None:
        with self._lock:
            self._writer.close()


def classify_error(error: BaseException) -> bool:
    """True when a delivery error means the record was definitely not written."""
    from tidelog.client import errors

    definite = (errors.InvalidBatch, errors.MessageTooLarge, errors.InvalidRequest,
                errors.InvalidTopic, errors.Unauthorized, errors.PolicyViolation,
                errors.ConfigError)
    return isinstance(error, definite)


# --- who leads ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Snapshot:
    # partition -> (leader node name or None, term)
    leaders: Mapping[int, tuple[str | None, int]]
    metadata_leader: str | None
    answered: tuple[str, ...]  # nodes that answered
    # partition -> (replicas, in-sync replicas) as the highest-term leader reports them
    replicas: Mapping[int, tuple[tuple[str, ...], tuple[str, ...]]] = field(default_factory=dict)

    def converged(self, partitions: int) -> bool:
        """Every partition has a leader and every replica is in sync."""
        return all(self.leaders.get(p, (None, 0))[0] is not None
                   and p in self.replicas
                   and set(self.replicas[p][0]) == set(self.replicas[p][1])
                   for p in range(partitions))


class ClusterView:
    """Asks every node for Metadata in parallel; the highest-term claim wins per partition."""

    def __init__(self, addresses: Mapping[str, str], topic: str, *, timeout_s: float = 1.0,
                 security: ClientSecurity | None = None) -> None:
        self._addresses = dict(addresses)
        self.security = security
        self._by_id = {int(n[1:]): n for n in addresses}
        self._topic = topic
        self._timeout_s = timeout_s
        self._pool = ThreadPoolExecutor(max_workers=len(addresses),
                                        thread_name_prefix="chaos-view")
        self._channels: dict[str, object] = {}
        self._lock = threading.Lock()

    def snapshot(self, topic: str | None = None) -> Snapshot:
        answers = dict(zip(self._addresses, self._pool.map(self._ask, self._addresses),
                           strict=True))
        leaders: dict[int, tuple[str | None, int]] = {}
        replicas: dict[int, tuple[tuple[str, ...], tuple[str, ...]]] = {}
        votes: dict[str, int] = {}
        for node, answer in answers.items():
            if answer is None:
                continue
            meta = self._by_id.get(answer.metadata_leader_id)
            if meta is not None:
                votes[meta] = votes.get(meta, 0) + 1 + (meta == node)
            for t in answer.topics:
                if t.name != (topic or self._topic):
                    continue
                for p in t.partitions:
                    leader = self._by_id.get(p.leader_id)
                    best = leaders.get(p.partition)
                    if best is None or (leader is not None and
                                        (best[0] is None or p.leader_term > best[1])):
                        leaders[p.partition] = (leader, p.leader_term)
                    if leader is not None and leader == node:  # the leader's own account
                        replicas[p.partition] = (
                            tuple(self._by_id.get(r, f"?{r}") for r in p.replicas),
                            tuple(self._by_id.get(r, f"?{r}") for r in p.in_sync))
        metadata_leader = max(votes, key=lambda n: votes[n]) if votes else None
        return Snapshot(leaders=leaders, metadata_leader=metadata_leader,
                        answered=tuple(n for n, a in answers.items() if a is not None),
                        replicas=replicas)

    def leader_address(self, partition: int) -> str | None:
        leader = self.snapshot().leaders.get(partition, (None, 0))[0]
        return self._addresses[leader] if leader else None

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            for channel in self._channels.values():
                channel.close()  # type: ignore[attr-defined]
            self._channels.clear()

    def _ask(self, node: str):  # noqa: ANN202 - MetadataResponse | None
        import grpc
        from tidelog.client import errors
        from tidelog.client.security import make_channel
        from tidelog.proto import broker_pb2 as pb
        from tidelog.proto import broker_pb2_grpc

        with self._lock:
            channel = self._channels.get(node)
            if channel is None:
                channel = self._channels[node] = make_channel(self._addresses[node], (),
                                                              self.security)
        try:
            return broker_pb2_grpc.BrokerStub(channel).Metadata(  # type: ignore[arg-type]
                pb.MetadataRequest(topics=[self._topic]), timeout=self._timeout_s)
        except (grpc.RpcError, errors.TidelogError):  # TidelogError: a SCRAM login failed
            return None


# --- the workload -------------------------------------------------------------------------------


class Workload:
    """Starts the producer, consumer and observer threads; `stop_*` ends them in order."""

    def __init__(self, config: WorkloadConfig, bootstrap: Sequence[str], recorder: Recorder,
                 view: ClusterView, *, seed: int, duration_s: float,
                 security: ClientSecurity | None = None) -> None:
        self.config = config
        self._security = security
        self._bootstrap = list(bootstrap)
        self._rec = recorder
        self._view = view
        self._seed = seed
        self._duration_s = duration_s
        self._stop_producing = threading.Event()
        self._stop_consuming = threading.Event()
        self._stop_observing = threading.Event()
        self._threads: list[threading.Thread] = []
        self._producer_threads: list[threading.Thread] = []
        # (partition -> next offset) the consumer has recorded up to
        self.consumed: dict[int, int] = {}
        self._consumed_lock = threading.Lock()

    def start(self) -> None:
        per_producer = self.config.rate_per_s / self.config.producers
        for i in range(self.config.producers):
            t = threading.Thread(target=self._produce, args=(f"p{i}", per_producer),
                                 name=f"chaos-producer-{i}", daemon=True)
            self._producer_threads.append(t)
        self._threads = [
            *self._producer_threads,
            threading.Thread(target=self._consume, name="chaos-consumer", daemon=True),
            *(threading.Thread(target=self._consume_group, args=(m,), daemon=True,
                               name=f"chaos-group-{m}")
              for m in range(self.config.group_consumers)),
            threading.Thread(target=self._observe, name="chaos-observer", daemon=True),
        ]
        for t in self._threads:
            t.start()

    def stop_producers(self) -> None:
        """Stop sending, wait for every outstanding send to resolve (bounded)."""
        self._stop_producing.set()
        deadline = time.monotonic() + self.config.delivery_timeout_ms / 1000 + 30
        for t in self._producer_threads:
            t.join(max(0.1, deadline - time.monotonic()))

    def stop_consumer(self, targets: Mapping[int, int], timeout_s: float) -> bool:
        """Let the consumer catch up to `targets` (partition -> high watermark), then stop it."""
        deadline = time.monotonic() + timeout_s
        caught_up = False
        while time.monotonic() < deadline:
            with self._consumed_lock:
                caught_up = all(self.consumed.get(p, 0) >= hw for p, hw in targets.items())
            if caught_up:
                break
            time.sleep(0.2)
        self._stop_consuming.set()
        self._stop_observing.set()
        for t in self._threads:
            t.join(15)
        return caught_up

    # --- threads --------------------------------------------------------------------------------

    def _produce(self, name: str, rate_per_s: float) -> None:
        from tidelog.client import Producer, errors

        cfg = self.config
        rng = random.Random(f"{self._seed}/{name}")
        interval_s = 1.0 / rate_per_s
        sends_max = int(rate_per_s * (self._duration_s + 60)) + 10
        pending: set[int] = set()
        lock = threading.Lock()
        resolved = threading.Condition(lock)
        producer = Producer(self._bootstrap, acks="all", idempotent=True, linger_ms=2,
                            request_timeout_ms=cfg.request_timeout_ms,
                            delivery_timeout_ms=cfg.delivery_timeout_ms,
                            max_block_ms=2_000, buffer_memory=16 << 20,
                            retry_backoff_ms=50, retry_backoff_ms_max=500,
                            metadata_max_age_ms=5_000, security=self._security)

        def outcome(seq: int) -> Callable[[object, BaseException | None], None]:
            def done(metadata: object, error: BaseException | None) -> None:
                now = self._rec.now_ms()
                with lock:
                    if seq not in pending:
                        return
                    pending.discard(seq)
                    resolved.notify_all()
                if error is None:
                    self._rec.append(SendOk(producer=name, seq=seq, partition=metadata.partition,  # type: ignore[attr-defined]
                                            offset=metadata.offset, time_ms=now))  # type: ignore[attr-defined]
                elif classify_error(error):
                    self._rec.append(SendFailed(producer=name, seq=seq, error=_err(error),
                                                time_ms=now))
                else:
                    self._rec.append(SendIndeterminate(producer=name, seq=seq,
                                                       error=_err(error), time_ms=now))
            return done

        next_at = time.monotonic()
        try:
            for seq in range(sends_max):
                with lock:
                    while len(pending) >= cfg.inflight_max and not self._stop_producing.is_set():
                        resolved.wait(0.1)
                now = time.monotonic()
                if next_at > now:
                    self._stop_producing.wait(next_at - now)
                if self._stop_producing.is_set():
                    break
                next_at = max(next_at + interval_s, time.monotonic() - 1.0)  # no catch-up burst
                key = f"k{rng.randrange(cfg.keys)}"
                value = encode_value(name, seq, size_bytes=cfg.value_bytes)
                self._rec.append(SendInvoked(producer=name, seq=seq, key=key, value=value,
                                             partition=None, time_ms=self._rec.now_ms()))
                with lock:
                    pending.add(seq)
                try:
                    producer.send(cfg.topic, value, key=key, callback=outcome(seq))
                except errors.TidelogError as exc:
                    # Raised by send() itself: nothing was queued, so it definitely failed.
                    with lock:
                        pending.discard(seq)
                    self._rec.append(SendFailed(producer=name, seq=seq,
                                                error=f"not queued: {_err(exc)}",
                                                time_ms=self._rec.now_ms()))
            with contextlib.suppress(errors.TidelogError):
                producer.flush(timeout=cfg.delivery_timeout_ms / 1000 + 10)
        finally:
            producer.close(timeout=5)
            with lock:
                left = sorted(pending)
                pending.clear()
            for seq in left:
                self._rec.append(SendIndeterminate(
                    producer=name, seq=seq, error="no outcome when the workload ended",
                    time_ms=self._rec.now_ms()))

    def _consume(self) -> None:
        from tidelog.client import Consumer, TopicPartition, errors

        cfg = self.config
        tps = [TopicPartition(cfg.topic, p) for p in range(cfg.partitions)]
        incarnations_max = 10_000
        for incarnation in range(incarnations_max):
            if self._stop_consuming.is_set():
                return
            cid = f"c0.{incarnation}"
            consumer = Consumer(self._bootstrap, auto_offset_reset="earliest",
                                fetch_max_wait_ms=200, request_timeout_ms=cfg.request_timeout_ms,
                                retry_backoff_ms=100, metadata_max_age_ms=5_000,
                                security=self._security)
            try:
                consumer.assign(tps)
                with self._consumed_lock:
                    for tp in tps:
                        if tp.partition in self.consumed:
                            consumer.seek(tp, self.consumed[tp.partition])
                polls = 0  # numbers this incarnation's poll() calls (internal vs external skips)
                while not self._stop_consuming.is_set():
                    records = consumer.poll(timeout_s=_POLL_S)
                    polls += 1
                    for r in records:
                        self._rec.append(ConsumerRead(
                            consumer=cid, group=None, partition=r.partition, offset=r.offset,
                            key=_text(r.key), value=_text(r.value), time_ms=self._rec.now_ms(),
                            poll=polls))
                        with self._consumed_lock:
                            self.consumed[r.partition] = r.offset + 1
                    # The position also moves past control batches (a leader's no-op at the end
                    # of a partition), which no record reports: else "caught up with the high
                    # watermark" could never hold after the last election.
                    for tp in tps:
                        position = consumer.position(tp)
                        with self._consumed_lock:
                            self.consumed[tp.partition] = max(
                                self.consumed.get(tp.partition, 0), position)
            except errors.TidelogError as exc:
                log.info("consumer %s: %s; starting a new incarnation", cid, exc)
                self._stop_consuming.wait(0.5)
            finally:
                consumer.close()

    def _consume_group(self, member: int) -> None:
        """One member of group GROUP: reads what it is assigned, commits what it read every
        `group_commit_interval_s` (synchronously, recording `group_commit` once it returned).
        Each assignment starts a new consumer id, so a re-read after a rebalance is not
        mistaken for a consumer going backwards."""
        from tidelog.client import Consumer, TopicPartition, errors

        cfg = self.config
        generation = [0]

        class Listener:
            def on_partitions_assigned(self, tps: object) -> None:
                generation[0] += 1

            def on_partitions_revoked(self, tps: object) -> None:
                generation[0] += 1

            def on_partitions_lost(self, tps: object) -> None:
                generation[0] += 1

        for incarnation in range(10_000):
            if self._stop_consuming.is_set():
                return
            consumer = Consumer(self._bootstrap, group_id=GROUP, enable_auto_commit=False,
                                auto_offset_reset="earliest", fetch_max_wait_ms=200,
                                request_timeout_ms=cfg.request_timeout_ms,
                                retry_backoff_ms=100, metadata_max_age_ms=5_000,
                                security=self._security)
            read_upto: dict[int, int] = {}
            committed: dict[int, int] = {}
            next_commit = time.monotonic() + cfg.group_commit_interval_s
            try:
                consumer.subscribe([cfg.topic], listener=Listener())
                polls = 0
                while not self._stop_consuming.is_set():
                    records = consumer.poll(timeout_s=_POLL_S)
                    polls += 1
                    cid = f"g{member}.{incarnation}.{generation[0]}"
                    for r in records:
                        self._rec.append(ConsumerRead(
                            consumer=cid, group=GROUP, partition=r.partition, offset=r.offset,
                            key=_text(r.key), value=_text(r.value), time_ms=self._rec.now_ms(),
                            poll=polls))
                        read_upto[r.partition] = r.offset + 1
                    if time.monotonic() < next_commit:
                        continue
                    next_commit = time.monotonic() + cfg.group_commit_interval_s
                    owned = {tp.partition for tp in consumer.assignment()}
                    todo = {p: o for p, o in read_upto.items()
                            if p in owned and committed.get(p) != o}
                    if todo:
                        consumer.commit({TopicPartition(cfg.topic, p): o for p, o in todo.items()})
                        now = self._rec.now_ms()
                        for p, o in sorted(todo.items()):
                            self._rec.append(GroupCommit(group=GROUP, partition=p, offset=o,
                                                         time_ms=now))
                        committed.update(todo)
            except errors.TidelogError as exc:
                log.info("group member %d: %s; starting a new incarnation", member, exc)
                self._stop_consuming.wait(0.5)
            finally:
                with contextlib.suppress(errors.TidelogError):
                    consumer.close()

    def _observe(self) -> None:
        last: dict[int, str | None] = {}
        rounds_max = int(self._duration_s * 4 / _OBSERVE_INTERVAL_S) + 1000
        for _ in range(rounds_max):
            if self._stop_observing.wait(_OBSERVE_INTERVAL_S):
                return
            snap = self._view.snapshot()
            for p in range(self.config.partitions):
                leader = snap.leaders.get(p, (None, 0))[0]
                if p not in last or last[p] != leader:
                    last[p] = leader
                    self._rec.append(LeaderObserved(partition=p, leader=leader,
                                                    time_ms=self._rec.now_ms()))


# --- the final read -----------------------------------------------------------------------------


def final_read(view: ClusterView, addresses: Mapping[str, str], topic: str, partition: int,
               *, timeout_s: float = _FINAL_READ_S_MAX) -> tuple[list[FinalRecord], int]:
    """Every record of the partition, from offset 0 to its high watermark, from its leader
    (dialled with the view's security).

    Returns (records, high watermark). Retries from scratch on any error until timeout_s."""
    import grpc
    from tidelog.client import errors

    deadline = time.monotonic() + timeout_s
    last_error = "no leader"
    while time.monotonic() < deadline:
        leader = view.snapshot().leaders.get(partition, (None, 0))[0]
        if leader is None:
            time.sleep(0.3)
            continue
        try:
            return _read_all(addresses[leader], topic, partition, view.security)
        except (grpc.RpcError, errors.TidelogError, _NotLeader) as exc:
            last_error = str(exc)
            time.sleep(0.3)
    raise TimeoutError(f"final read of {topic}-{partition} failed for {timeout_s:.0f} s: "
                       f"{last_error}")


class _NotLeader(Exception):
    pass


def _read_all(address: str, topic: str, partition: int,
              security: ClientSecurity | None) -> tuple[list[FinalRecord], int]:
    from tidelog.client.security import make_channel
    from tidelog.proto import broker_pb2 as pb
    from tidelog.proto import broker_pb2_grpc
    from tidelog.proto.batch import decode_records, iter_batches

    records: list[FinalRecord] = []
    offset = 0
    hw = -1
    with make_channel(address, (), security) as channel:
        stub = broker_pb2_grpc.BrokerStub(channel)
        for _ in range(_FINAL_FETCHES_MAX):
            reply = stub.Fetch(pb.FetchRequest(
                partitions=[pb.FetchPartition(topic=topic, partition=partition, offset=offset,
                                              max_bytes=_FETCH_BYTES_MAX)], max_wait_ms=0),
                timeout=10)
            part = reply.partitions[0]
            if part.error != pb.NONE:
                raise _NotLeader(f"{address}: {pb.ErrorCode.Name(part.error)} "
                                 f"{part.error_message}")
            hw = part.high_watermark
            if not part.batches:
                if offset < hw:
                    raise _NotLeader(f"{address}: no batches at {offset} below hw {hw}")
                return records, hw
            for pos, header in iter_batches(part.batches):
                if header.last_offset < offset:
                    continue
                if not header.is_control:
                    for r in decode_records(part.batches[pos:pos + header.size]):
                        if r.offset >= offset:
                            records.append(FinalRecord(offset=r.offset, key=_text(r.key),
                                                       value=_text(r.value)))
                offset = header.last_offset + 1
    raise AssertionError(f"final read of {topic}-{partition} over {_FINAL_FETCHES_MAX} fetches")


def read_all_partitions(view: ClusterView, addresses: Mapping[str, str], topic: str,
                        partitions: int, recorder: Recorder) -> dict[int, int]:
    """Record one `final_read` event per partition; returns partition -> high watermark."""
    hws = {}
    for p in range(partitions):
        records, hw = final_read(view, addresses, topic, p)
        recorder.append(FinalRead(partition=p, records=tuple(records), time_ms=recorder.now_ms()))
        hws[p] = hw
    return hws


def _text(data: bytes | None) -> str:
    return "" if data is None else data.decode("utf-8", errors="replace")


def _err(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"[:300]
