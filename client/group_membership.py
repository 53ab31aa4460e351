"""The sync Consumer's group coordination: subscription, applying assignment changes, commits.

Split out of consumer.py (issue 15, the way aiokafka splits its consumer): the Consumer keeps
the lock, poll() and positions; this module owns what only a group member has — the
`CoordinatorClient`, the heartbeat `Membership` (tidelog.client.group), the rebalance callbacks,
auto-commit, and the commit pool behind commit_async.

Narrow interface: it reads and changes the partitions owned only through the Fetcher
(`states`, `assign`, `seek`) and topic metadata through `Metadata.topic`. Not thread-safe by
itself: the Consumer calls it under its lock, except `send_commit` (any thread) and
`drain_commits` (close(), without the lock, so commit callbacks may use the consumer).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from tidelog.client import errors
from tidelog.client.config import ConsumerConfig
from tidelog.client.connection import Connections
from tidelog.client.fetcher import Fetcher
from tidelog.client.group import CoordinatorClient, Membership, tps_to_wire
from tidelog.client.metadata import Metadata
from tidelog.client.records import TopicPartition

__all__ = ["ASYNC_COMMITS_IN_FLIGHT_MAX", "CommitCallback", "GroupCoordination", "Listeners",
           "PartitionsCallback"]

_log = logging.getLogger("tidelog.client.consumer")

ASYNC_COMMITS_IN_FLIGHT_MAX = 16  # commit_async blocks while this many are unanswered

PartitionsCallback = Callable[[set[TopicPartition]], None]
CommitCallback = Callable[[dict[TopicPartition, int], BaseException | None], None]


def _log_commit_failure(offsets: dict[TopicPartition, int], error: BaseException | None) -> None:
    if error is not None:
        _log.warning("auto-commit of %d partitions failed: %s", len(offsets), error)


class Listeners:
    """The rebalance callbacks; on_lost defaults to on_revoke."""

    def __init__(self, on_assign: PartitionsCallback | None,
                 on_revoke: PartitionsCallback | None, on_lost: PartitionsCallback | None
                 ) -> None:
        self.on_assign, self.on_revoke, self.on_lost = on_assign, on_revoke, on_lost

    def set_listener(self, listener: Any) -> None:
        """An object with on_partitions_assigned/_revoked/_lost methods (each optional)."""
        self.on_assign = getattr(listener, "on_partitions_assigned", None) or self.on_assign
        self.on_revoke = getattr(listener, "on_partitions_revoked", None) or self.on_revoke
        self.on_lost = getattr(listener, "on_partitions_lost", None) or self.on_lost


class GroupCoordination:
    """One consumer's membership of its group_id, and its commits."""

    def __init__(self, config: ConsumerConfig, metadata: Metadata, connections: Connections,
                 fetcher: Fetcher, listeners: Listeners) -> None:
        assert config.group_id is not None
        self._config = config
        self._metadata = metadata
        self._fetcher = fetcher
        self.listeners = listeners
        self.coordinator = CoordinatorClient(config.group_id, metadata, connections,
                                             backoff_s=config.retry_backoff_ms / 1000)
        #: None until subscribe()
        self.membership: Membership | None = None
        self._next_auto_commit = time.monotonic() + config.auto_commit_interval_ms / 1000
        self._commit_slots = threading.BoundedSemaphore(ASYNC_COMMITS_IN_FLIGHT_MAX)
        # its one thread starts at the first submit; made here so no two threads race to
        self._commit_pool = ThreadPoolExecutor(1, thread_name_prefix="tidelog-commit")

    # --- subscription ----------------------------------------------------------------------------

    def subscribe(self, topics: Sequence[str], pattern: str) -> None:
        """Join with this subscription, or (already a member) replace it: the next heartbeat
        carries it and the new assignment arrives through apply_changes()."""
        if self.membership is not None:
            self.membership.resubscribe(topics, pattern)
            return
        config = self._config
        self.membership = Membership(
            self.coordinator, topics=topics, pattern=pattern, assignor=config.group_assignor,
            session_timeout_ms=config.session_timeout_ms,
            max_poll_interval_ms=config.max_poll_interval_ms,
            request_timeout_ms=config.request_timeout_ms, client_id=config.client_id)
        self.membership.start()

    @property
    def member_id(self) -> str:
        """This member's id ("" before subscribe())."""
        return self.membership.member_id if self.membership is not None else ""

    def polled(self) -> None:
        if self.membership is not None:
            self.membership.polled()

    def apply_changes(self) -> bool:
        """Apply what the coordinator decided since the last call (lost, then revoked, then
        assigned; callbacks on this thread); True if anything changed."""
        group = self.membership
        if group is None:
            return False
        changes = group.changes()
        if not changes:
            return False
        fetcher, listeners = self._fetcher, self.listeners
        owned = set(fetcher.states)
        if changes.lost:
            callback = listeners.on_lost or listeners.on_revoke
            if callback is not None:
                callback(set(changes.lost))
            owned -= changes.lost
            fetcher.assign(sorted(owned))
            group.acknowledge(owned, lost=True)
            return True
        if changes.revoked:
            if listeners.on_revoke is not None:
                listeners.on_revoke(set(changes.revoked))
            if self._config.enable_auto_commit:
                try:
                    self.commit({tp: pos for tp in changes.revoked
                                 if (pos := fetcher.states[tp].position) is not None})
                except errors.TidelogError as exc:
                    _log.warning("commit of revoked partitions failed: %s", exc)
            owned -= changes.revoked
            fetcher.assign(sorted(owned))
        if changes.assigned:
            for topic in {tp.topic for tp in changes.assigned}:
                self._metadata.topic(topic, timeout_s=self._config.request_timeout_ms / 1000)
            committed = self.fetch_committed(changes.assigned)
            owned |= changes.assigned
            fetcher.assign(sorted(owned))
            for tp, offset in committed.items():
                fetcher.seek(tp, offset)
            if listeners.on_assign is not None:
                listeners.on_assign(set(changes.assigned))
        group.acknowledge(owned)
        return True

    def leave(self) -> None:
        if self.membership is not None:
            self.membership.leave()

    # --- commits ---------------------------------------------------------------------------------

    def maybe_auto_commit(self) -> None:
        if (not self._config.enable_auto_commit or self.membership is None
                or time.monotonic() < self._next_auto_commit):
            return
        self._next_auto_commit = time.monotonic() + self._config.auto_commit_interval_ms / 1000
        self.commit_async(self.commit_request(None, ""), _log_commit_failure)

    def commit(self, offsets: Mapping[TopicPartition, int] | None, metadata: str = "") -> None:
        request = self.commit_request(offsets, metadata)
        if request is not None:
            self.send_commit(request)

    def commit_request(self, offsets: Mapping[TopicPartition, int] | None,
                       metadata: str) -> object | None:
        """The OffsetCommit for `offsets` (default: every owned position); None: nothing to do."""
        from tidelog.proto import broker_pb2

        if self.membership is None:
            raise errors.ConfigError("commit() needs a group_id and a subscription")
        if offsets is None:
            offsets = {tp: st.position for tp, st in self._fetcher.states.items()
                       if st.position is not None}
        if not offsets:
            return None
        return broker_pb2.OffsetCommitRequest(
            group_id=self.coordinator.group_id, member_id=self.membership.member_id,
            member_epoch=self.membership.epoch,
            partitions=[broker_pb2.OffsetCommitPartition(
                topic=tp.topic, partition=tp.partition, offset=offset, metadata=metadata)
                for tp, offset in sorted(offsets.items())],
            timeout_ms=self._config.request_timeout_ms)

    def send_commit(self, request: Any) -> None:
        """Send one OffsetCommit and wait for it (any thread; counted in the metrics)."""
        started = time.monotonic()
        try:
            self.coordinator.call("OffsetCommit", request,
                                  timeout_s=self._config.request_timeout_ms / 1000)
        except BaseException as exc:
            self._fetcher.counters.committed(time.monotonic() - started, exc)
            raise
        self._fetcher.counters.committed(time.monotonic() - started, None)

    def commit_async(self, request: Any, callback: CommitCallback | None) -> Future[None]:
        """Send `request` on the commit thread; `callback(offsets, error)` runs there. Blocks
        while ASYNC_COMMITS_IN_FLIGHT_MAX are pending."""
        done: Future[None] = Future()
        if request is None:
            done.set_result(None)
            return done
        committed = {TopicPartition(p.topic, p.partition): p.offset
                     for p in request.partitions}
        self._commit_slots.acquire()

        def run() -> None:
            error: BaseException | None = None
            try:
                self.send_commit(request)
            except BaseException as exc:  # handed to the callback and the future
                error = exc
            finally:
                self._commit_slots.release()
            if callback is not None:
                callback(committed, error)
            if error is None:
                done.set_result(None)
            else:
                done.set_exception(error)

        self._commit_pool.submit(run)
        return done

    def drain_commits(self) -> None:
        """Wait for every commit_async sent (call WITHOUT the consumer's lock: callbacks may
        use the consumer)."""
        self._commit_pool.shutdown(wait=True)

    def fetch_committed(self, tps: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """The group's committed offsets of tps (I/O); partitions without one are left out."""
        from tidelog.proto import broker_pb2

        response = self.coordinator.call(
            "OffsetFetch", broker_pb2.OffsetFetchRequest(
                group_id=self.coordinator.group_id, partitions=tps_to_wire(tps)),
            timeout_s=self._config.request_timeout_ms / 1000)
        return {TopicPartition(p.topic, p.partition): p.offset
                for p in response.partitions if p.offset >= 0}  # type: ignore[attr-defined]
