"""The Consumer: read records of manually assigned partitions, or as a member of a group.

Modules (issue 15's split, after aiokafka): this file is the public facade, the lock and
poll(); tidelog.client.subscription holds the assignment and positions, tidelog.client
.group_membership the group side (subscription, rebalance callbacks, commits) and
tidelog.client.fetcher the fetches, prefetch buffer and decoding.

Manual: ``assign`` + ``seek``. Group (``group_id`` + ``topics``/``subscribe``): the group's
coordinator decides which partitions this consumer owns (tidelog.client.group runs the heartbeat
thread); ``poll`` applies assignment changes before it returns records — revoked partitions get
the ``on_revoke`` callback and (with auto-commit) a synchronous commit before they are given up,
new ones start at the group's committed offset (else ``auto_offset_reset``) — so callbacks run on
the thread that calls ``poll``. See docs/consumer-groups.md for the delivery guarantees.

Thread-safety: every public method takes one lock, so a consumer may be shared between threads,
but records are handed out once: two threads polling the same consumer split the stream. poll()
releases the lock while it waits for fetch replies, and metadata refreshes run on a background
thread, so poll(timeout_s) returns within timeout_s (plus one ListOffsets/commit round when
positions must be resolved or partitions change hands) even with a node paused. ``wakeup()``
from any thread makes a waiting (or the next) poll raise WakeupError.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import Any

from tidelog.client import errors, offsets
from tidelog.client.config import ConsumerConfig, parse_bootstrap
from tidelog.client.connection import Connections
from tidelog.client.fetcher import Fetcher
from tidelog.client.group_membership import (
    ASYNC_COMMITS_IN_FLIGHT_MAX,
    CommitCallback,
    GroupCoordination,
    Listeners,
    PartitionsCallback,
)
from tidelog.client.metadata import Metadata
from tidelog.client.records import ConsumerRecord, TopicPartition
from tidelog.client.security import ClientSecurity
from tidelog.client.subscription import SubscriptionState
from tidelog.client.throttle import ThrottleStats, check_client_id

__all__ = ["ASYNC_COMMITS_IN_FLIGHT_MAX", "Consumer", "PartitionsCallback"]

_log = logging.getLogger(__name__)

_SLICE_S = 0.1  # poll() re-checks metadata and out-of-range partitions this often while waiting

Deserializer = Callable[[bytes], Any]


class Consumer:
    """Read records from assigned partitions.

    >>> with Consumer("127.0.0.1:9091", auto_offset_reset="earliest") as consumer:
    ...     consumer.assign([TopicPartition("events", 0)])
    ...     for record in consumer.poll(timeout_s=1.0):
    ...         print(record.offset, record.value)
    """

    def __init__(
        self,
        bootstrap: str | Sequence[str],
        *,
        auto_offset_reset: str = "latest",
        fetch_max_wait_ms: int = 500,
        fetch_min_bytes: int = 1,
        fetch_max_bytes: int = 16 * 1024 * 1024,
        partition_fetch_bytes_max: int = 2 * 1024 * 1024,
        prefetch_bytes_max: int = 32 * 1024 * 1024,
        max_poll_records: int = 1000,
        request_timeout_ms: int = 30_000,
        retry_backoff_ms: int = 100,
        metadata_max_age_ms: int = 300_000,
        group_id: str | None = None,
        topics: Sequence[str] | None = None,
        pattern: str | None = None,
        enable_auto_commit: bool = True,
        auto_commit_interval_ms: int = 5000,
        session_timeout_ms: int = 45_000,
        max_poll_interval_ms: int = 300_000,
        group_assignor: str = "",
        client_id: str = "",
        bootstrap_timeout_s: float = 10.0,
        on_assign: PartitionsCallback | None = None,
        on_revoke: PartitionsCallback | None = None,
        on_lost: PartitionsCallback | None = None,
        listener: Any = None,
        security: ClientSecurity | None = None,
        key_deserializer: Deserializer | None = None,
        value_deserializer: Deserializer | None = None,
    ) -> None:
        """With `group_id`, the consumer joins that group for `topics` (or the regex `pattern`;
        or call subscribe() later). Callbacks get sets of TopicPartition and run inside poll();
        `listener` may instead be an object with on_partitions_assigned/_revoked/_lost methods.
        on_lost (fenced: the partitions already belong to someone else, commits would be refused)
        defaults to on_revoke. `key_deserializer`/`value_deserializer` turn each non-None key /
        value into what poll() returns in the record (None stays None: tombstones)."""
        self._key_deserializer, self._value_deserializer = key_deserializer, value_deserializer
        self.config = ConsumerConfig(
            bootstrap=parse_bootstrap(bootstrap), security=security,
            auto_offset_reset=auto_offset_reset,
            fetch_max_wait_ms=fetch_max_wait_ms, fetch_min_bytes=fetch_min_bytes,
            fetch_max_bytes=fetch_max_bytes, partition_fetch_bytes_max=partition_fetch_bytes_max,
            prefetch_bytes_max=prefetch_bytes_max, max_poll_records=max_poll_records,
            request_timeout_ms=request_timeout_ms, retry_backoff_ms=retry_backoff_ms,
            metadata_max_age_ms=metadata_max_age_ms, group_id=group_id,
            enable_auto_commit=enable_auto_commit, auto_commit_interval_ms=auto_commit_interval_ms,
            session_timeout_ms=session_timeout_ms, max_poll_interval_ms=max_poll_interval_ms,
            group_assignor=group_assignor, client_id=client_id,
            bootstrap_timeout_s=bootstrap_timeout_s,
        )
        self._connections = Connections(self.config.security,
                                        client_id=check_client_id(self.config.client_id))
        self._metadata = Metadata(
            self._connections, self.config.bootstrap,
            request_timeout_ms=request_timeout_ms, max_age_ms=metadata_max_age_ms,
            retry_backoff_ms=retry_backoff_ms,
            bootstrap_timeout_s=self.config.bootstrap_timeout_s,
        )
        self._fetcher = Fetcher(self.config, self._metadata, self._connections)
        self._lock = threading.RLock()
        self._closed = False
        self._closing = False
        self._wakeup = threading.Event()
        # Metadata refreshes run here, never on the poll thread: a paused node must not hold
        # poll() for a request timeout. At most one refresh at a time.
        self._refresher = ThreadPoolExecutor(1, thread_name_prefix="tidelog-metadata")
        self._refreshing: Future[None] | None = None
        self._subscription = SubscriptionState(self.config, self._metadata, self._connections,
                                               self._fetcher)
        self._listeners = Listeners(on_assign, on_revoke, on_lost)
        if listener is not None:
            self._listeners.set_listener(listener)
        self._group: GroupCoordination | None = None
        if group_id is not None:
            self._group = GroupCoordination(self.config, self._metadata, self._connections,
                                            self._fetcher, self._listeners)
            if topics or pattern:
                self.subscribe(topics or (), pattern=pattern)

    # --- assignment -----------------------------------------------------------------------------

    def assign(self, partitions: Iterable[TopicPartition]) -> None:
        """Read exactly these partitions (replacing any earlier assignment). Positions start
        unknown and are set by seek*/auto_offset_reset. Raises TopicNotFound for a bad one."""
        tps = list(partitions)
        with self._lock:
            self._check_open()
            if self._group is not None and self._group.membership is not None:
                raise errors.TidelogError("this consumer is subscribed to a group: the group "
                                          "assigns its partitions (use assign() without group)")
            self._subscription.assign_checked(tps)

    def assignment(self) -> set[TopicPartition]:
        with self._lock:
            return self._subscription.assignment()

    def partitions_for(self, topic: str) -> list[TopicPartition]:
        with self._lock:
            description = self._metadata.topic(
                topic, timeout_s=self.config.request_timeout_ms / 1000)
        return [TopicPartition(topic, p.partition) for p in description.partitions]

    def subscribe(self, topics: Sequence[str] = (), *, pattern: str | None = None,
                  listener: Any = None) -> None:
        """Join the group (group_id) for these topics or the topics matching `pattern` (a Python
        regex, full match). Partitions arrive through poll(). Subscribing again replaces the
        subscription (the same member; the next heartbeat carries it, and the coordinator's new
        assignment arrives through poll() as revocations and assignments, callbacks included)."""
        with self._lock:
            self._check_open()
            if self._group is None:
                raise errors.ConfigError("subscribe() needs a group_id")
            if not topics and not pattern:
                raise errors.ConfigError("subscribe to at least one topic, or a pattern")
            if self._group.membership is None and self._fetcher.states:
                raise errors.TidelogError("assign() and subscribe() cannot be mixed")
            if listener is not None:
                self._listeners.set_listener(listener)
            self._group.subscribe(topics, pattern or "")

    # --- committed offsets (groups) ---------------------------------------------------------------

    def commit(self, offsets: Mapping[TopicPartition, int] | None = None,
               metadata: str = "") -> None:
        """Commit offsets (default: the position of every owned partition, i.e. one past the
        last record poll() returned) and return once they are committed through Raft.
        Raises FencedMemberEpoch / UnknownMemberId when this member lost the partitions."""
        with self._lock:
            group = self._member()
            request = group.commit_request(offsets, metadata)
        if request is not None:
            group.send_commit(request)

    def commit_async(
        self, offsets: Mapping[TopicPartition, int] | None = None, metadata: str = "",
        callback: CommitCallback | None = None,
    ) -> Future[None]:
        """Like commit() but in the background; `callback(offsets, error)` runs on the commit
        thread. Not retried on fencing. Blocks while ASYNC_COMMITS_IN_FLIGHT_MAX are pending."""
        with self._lock:
            group = self._member()
            request = group.commit_request(offsets, metadata)
        return group.commit_async(request, callback)

    def committed(self, tp: TopicPartition) -> int | None:
        """The group's committed offset of tp (I/O), None when nothing is committed."""
        if self._group is None:
            raise errors.ConfigError("committed offsets need a group_id")
        return self._group.fetch_committed([tp]).get(tp)

    # --- positions -------------------------------------------------------------------------------

    def seek(self, tp: TopicPartition, offset: int) -> None:
        """The next poll returns records of tp from `offset`. An offset outside [log start, high
        watermark] is detected by the next fetch and handled by auto_offset_reset ('error' raises
        OffsetOutOfRange from poll)."""
        if offset < 0:
            raise errors.OffsetOutOfRange(f"{tp}: offset must be >= 0, not {offset}",
                                          topic=tp.topic, partition=tp.partition, offset=offset)
        with self._lock:
            self._subscription.seek(tp, offset)

    def seek_to_beginning(self, partitions: Iterable[TopicPartition] | None = None) -> None:
        with self._lock:
            self._check_open()
            self._subscription.seek_to(partitions, offsets.EARLIEST)

    def seek_to_end(self, partitions: Iterable[TopicPartition] | None = None) -> None:
        with self._lock:
            self._check_open()
            self._subscription.seek_to(partitions, offsets.LATEST)

    def position(self, tp: TopicPartition) -> int:
        """The offset of the next record poll() will return for tp (resolving it if unknown)."""
        with self._lock:
            return self._subscription.position(tp)

    def offsets_for_times(
        self, timestamps: Mapping[TopicPartition, int]
    ) -> dict[TopicPartition, int | None]:
        """For each partition, the first offset whose timestamp is >= the given ms since the
        epoch, or None when there is no such record."""
        found = self._list({tp: (offsets.TIMESTAMP, ts) for tp, ts in timestamps.items()})
        return {tp: (None if offset < 0 else offset) for tp, offset in found.items()}

    def beginning_offsets(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        return self._list({tp: (offsets.EARLIEST, 0) for tp in partitions})

    def end_offsets(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """The high watermark of each partition: the offset the next committed record gets."""
        return self._list({tp: (offsets.LATEST, 0) for tp in partitions})

    def pause(self, *partitions: TopicPartition) -> None:
        """Stop fetching and returning these partitions (their buffered records are kept)."""
        with self._lock:
            self._subscription.set_paused(partitions, True)

    def resume(self, *partitions: TopicPartition) -> None:
        with self._lock:
            self._subscription.set_paused(partitions, False)

    def paused(self) -> set[TopicPartition]:
        with self._lock:
            return self._subscription.paused()

    @property
    def throttle(self) -> ThrottleStats:
        """How often and how long the nodes' fetch quotas throttled this consumer (each time it
        waited the throttle time out before its next fetch from that node)."""
        return self._fetcher.throttle.stats

    def metrics(self) -> dict[str, object]:
        """A snapshot of this consumer's counters, like kafka-python's ``metrics()``: a new
        plain dict each call, keys listed in docs/client.md ("Metrics"). Thread-safe, no I/O,
        and it never waits for a poll() in progress. ``lag`` maps "topic/partition" to the
        records between the position and the high watermark of the partition's last fetch
        reply (partitions not fetched yet are left out)."""
        states = list(self._fetcher.states.values())  # assign() replaces the dict, never edits it
        lag = self._subscription.lag()
        out: dict[str, object] = {
            "partitions_assigned": len(states),
            "buffered_bytes": sum(st.raw_bytes for st in states),
        }
        out.update(self._fetcher.counters.snapshot())
        out["lag"] = lag
        out["lag_max"] = max(lag.values(), default=0)
        throttle = self.throttle
        out["throttled_responses"] = throttle.throttled_responses
        out["throttle_time_ms_total"] = throttle.throttle_time_ms_total
        return out

    # --- reading --------------------------------------------------------------------------------

    def poll(self, timeout_s: float = 1.0, max_records: int | None = None) -> list[ConsumerRecord]:
        """Records from the assigned, unpaused partitions, waiting up to timeout_s for some.

        Returns [] on timeout. Per partition, records come in offset order and each is returned
        once; poll moves the position past what it returns. Raises OffsetOutOfRange when a
        position is outside the log and auto_offset_reset='error'; CorruptRecordError (every
        time, until a seek past it) for a partition whose fetched batch cannot be decoded;
        WakeupError after wakeup()."""
        limit = max_records or self.config.max_poll_records
        deadline = time.monotonic() + max(0.0, timeout_s)
        first = True
        while True:
            with self._lock:
                self._check_open()
                if self._wakeup.is_set():
                    self._wakeup.clear()
                    raise errors.WakeupError("poll() interrupted by wakeup()")
                records = self._poll_round(limit, deadline, first=first)
            first = False
            if records:
                return self._deserialized(records)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            self._fetcher.wait(min(remaining, _SLICE_S))  # without the lock: others may run

    def wakeup(self) -> None:
        """Interrupt a poll() waiting in another thread (safe from any thread, no lock): it
        raises WakeupError; with no poll() waiting, the next one raises it (Kafka's wakeup())."""
        self._wakeup.set()
        self._fetcher.interrupt()

    def __iter__(self) -> Iterator[ConsumerRecord]:
        """Yield records forever (until close()); each poll waits up to 1 s."""
        while not self._closed:
            yield from self.poll(timeout_s=1.0)

    def close(self) -> None:
        """Leave the group (committing first when auto-commit is on) and release everything.

        Waits for pending commit_async calls *without* the consumer's lock, so their callbacks
        may still call the consumer (position(), assignment(), ...); the consumer is closed
        (ClientClosed) only after they ran."""
        with self._lock:
            if self._closed or self._closing:
                return
            self._closing = True
            group = self._group
            if group is not None and group.membership is not None \
                    and self.config.enable_auto_commit:
                try:
                    group.commit(None)
                except errors.TidelogError as exc:
                    _log.warning("final auto-commit failed: %s", exc)
        if group is not None:
            group.drain_commits()
        self._refresher.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            if group is not None:
                group.leave()
            self._closed = True
            self._fetcher.close()
            self._connections.close()

    def __enter__(self) -> Consumer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- helpers -----------------------------------------------------------------------------

    def _poll_round(self, limit: int, deadline: float, *, first: bool) -> list[ConsumerRecord]:
        """One round of poll() under the lock: group changes, positions, replies, records."""
        if self._group is not None:
            self._group.polled()  # waiting inside poll() counts as polling
            self._group.apply_changes()
            if first:
                self._group.maybe_auto_commit()
        self._subscription.reset_unknown(deadline)
        self._fetcher.handle_replies()
        self._subscription.handle_out_of_range(deadline)
        try:
            return self._fetcher.take(limit)  # may raise one partition's error
        finally:
            # even then: the other partitions keep being fetched (prefetch while the caller
            # works on the records)
            self._refresh_in_background()
            self._fetcher.send_fetches()

    def _refresh_in_background(self) -> None:
        """Refresh stale metadata on the refresher thread; fetches wait for a leader meanwhile
        (a failure is retried on a later round)."""
        if self._refreshing is not None and not self._refreshing.done():
            return
        stale = self._metadata.stale_topics()
        if stale:
            self._refreshing = self._refresher.submit(self._refresh_quietly, stale)

    def _refresh_quietly(self, topics: set[str]) -> None:
        with contextlib.suppress(errors.TidelogError):
            self._metadata.refresh(topics)

    def _deserialized(self, records: list[ConsumerRecord]) -> list[ConsumerRecord]:
        kd, vd = self._key_deserializer, self._value_deserializer
        if kd is None and vd is None:
            return records
        return [r._replace(key=r.key if kd is None or r.key is None else kd(r.key),
                           value=r.value if vd is None or r.value is None else vd(r.value))
                for r in records]

    def _check_open(self) -> None:
        if self._closed:
            raise errors.ClientClosed("the consumer is closed")

    def _member(self) -> GroupCoordination:
        self._check_open()
        if self._group is None or self._group.membership is None:
            raise errors.ConfigError("commit() needs a group_id and a subscription")
        return self._group

    def _list(self, specs: dict[TopicPartition, tuple[int, int]]) -> dict[TopicPartition, int]:
        """ListOffsets without the lock: it touches no consumer state (I/O)."""
        self._check_open()
        return self._subscription.list_offsets(specs)
