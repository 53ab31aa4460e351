"""Consumer group membership on the client: coordinator lookup, the heartbeat thread, commits.

Theory of operation (the protocol is docs/consumer-groups.md; the server half is
tidelog.node.groups)
---------------------------------------------------------------------------------------------
* `CoordinatorClient` finds the group's coordinator (FindCoordinator on any node) and sends calls
  to it, finding it again after NOT_COORDINATOR, COORDINATOR_NOT_AVAILABLE or an unreachable
  node, with backoff, until the call's deadline.
* `Membership` runs one daemon thread that heartbeats every `heartbeat_interval_ms` (the
  coordinator says how often) or at once when the consumer acknowledged a change. It sends what
  the consumer *owns*; the coordinator answers with what the member should own now. The thread
  never touches the fetcher or calls user code: it only records the new assignment.
* The consumer's `poll()` thread calls `Membership.changes()` and applies them: revocations first
  (user callback, commit, drop the partitions), then `acknowledge(owned)` wakes the thread to
  tell the coordinator, which only then hands those partitions to their new owners.
* Fencing: UNKNOWN_MEMBER_ID / FENCED_MEMBER_EPOCH (the session timed out, or the member was
  removed) mark every owned partition *lost*: the consumer drops them without committing (its
  commits would be refused anyway) and the member joins again with epoch 0.
* max_poll_interval_ms: if poll() is not called for that long, the thread leaves the group (so
  the partitions move on); the next poll() finds them lost and joins again.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from tidelog.client import errors
from tidelog.client.connection import Connections
from tidelog.client.metadata import Metadata
from tidelog.client.records import TopicPartition

__all__ = ["Changes", "CoordinatorClient", "Membership", "tps_from_wire", "tps_to_wire"]

_log = logging.getLogger(__name__)

JOIN_EPOCH = 0
LEAVE_EPOCH = -1
_COORDINATOR_ERRORS = (errors.NotCoordinator, errors.CoordinatorNotAvailable,
                       errors.NodeUnavailable, errors.Timeout)


def tps_to_wire(tps: Iterable[TopicPartition]) -> list[object]:
    from tidelog.proto import broker_pb2

    by_topic: dict[str, list[int]] = {}
    for tp in sorted(tps):
        by_topic.setdefault(tp.topic, []).append(tp.partition)
    return [broker_pb2.TopicPartitions(topic=t, partitions=ps) for t, ps in by_topic.items()]


def tps_from_wire(items: Iterable[object]) -> set[TopicPartition]:
    return {TopicPartition(item.topic, p)  # type: ignore[attr-defined]
            for item in items for p in item.partitions}  # type: ignore[attr-defined]


class CoordinatorClient:
    """Calls to one group's coordinator, wherever it is. Thread-safe."""

    def __init__(self, group_id: str, metadata: Metadata, connections: Connections, *,
                 backoff_s: float) -> None:
        self.group_id = group_id
        self._metadata = metadata
        self._connections = connections
        self._backoff_s = backoff_s
        self._lock = threading.Lock()
        self._address: str | None = None

    def call(self, method: str, request: object, *, timeout_s: float) -> object:
        """Raises the coordinator's non-retriable errors at once, Timeout after timeout_s."""
        deadline = time.monotonic() + timeout_s
        last: errors.TidelogError | None = None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise errors.Timeout(
                    f"group {self.group_id!r}: {method} did not succeed within {timeout_s:.1f} s "
                    f"(last error: {last})")
            try:
                address = self._coordinator()
                return self._connections.call(address, method, request,
                                              timeout_s=max(0.1, remaining),
                                              subject=f"group {self.group_id!r}")
            except _COORDINATOR_ERRORS as exc:
                last = exc
                self.forget()
            time.sleep(min(self._backoff_s, max(0.0, deadline - time.monotonic())))

    def forget(self) -> None:
        with self._lock:
            self._address = None

    def _coordinator(self) -> str:
        with self._lock:
            if self._address is not None:
                return self._address
        from tidelog.proto import broker_pb2

        response = self._metadata.call_any(
            "FindCoordinator", broker_pb2.FindCoordinatorRequest(group_id=self.group_id))
        address = response.address  # type: ignore[attr-defined]
        with self._lock:
            self._address = address
        return address


@dataclass(frozen=True, slots=True, kw_only=True)
class Changes:
    """What poll() must do, in this order: drop `lost` (no commit), revoke `revoked` (callback,
    commit, drop), then take `assigned` (fetch committed offsets, callback)."""

    lost: frozenset[TopicPartition] = frozenset()
    revoked: frozenset[TopicPartition] = frozenset()
    assigned: frozenset[TopicPartition] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.lost or self.revoked or self.assigned)


class Membership:
    """One member of one group: the heartbeat thread and the state it shares with poll()."""

    def __init__(
        self, coordinator: CoordinatorClient, *, topics: Iterable[str] = (), pattern: str = "",
        assignor: str = "", session_timeout_ms: int, max_poll_interval_ms: int,
        request_timeout_ms: int, client_id: str = "", clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.coordinator = coordinator
        self.member_id = uuid.uuid4().hex
        self._topics = tuple(sorted(set(topics)))
        self._pattern = pattern
        self._assignor = assignor
        self._session_timeout_ms = session_timeout_ms
        self._max_poll_interval_ms = max_poll_interval_ms
        self._request_timeout_s = request_timeout_ms / 1000
        self._client_id = client_id
        self._clock = clock
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        # Guarded by _lock:
        self._epoch = JOIN_EPOCH
        self._owned: frozenset[TopicPartition] = frozenset()  # acknowledged by poll()
        self._assignment: frozenset[TopicPartition] | None = None  # latest from coordinator
        self._lost = False
        self._poll_timed_out = False
        self._last_poll = clock()
        self._interval_s = min(1.0, session_timeout_ms / 5000)
        self.last_error: errors.TidelogError | None = None
        self._thread = threading.Thread(target=self._run, name=f"tidelog-heartbeat-"
                                        f"{coordinator.group_id}", daemon=True)

    # --- poll thread -------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    @property
    def epoch(self) -> int:
        with self._lock:
            return self._epoch

    def polled(self) -> None:
        """poll() was called: the member is alive as far as max_poll_interval_ms goes."""
        with self._lock:
            self._last_poll = self._clock()
            if self._poll_timed_out:
                self._poll_timed_out = False
                self._wake.set()

    def changes(self) -> Changes:
        with self._lock:
            if self._lost and not self._owned:  # nothing to drop: join again at once
                self._lost, self._epoch, self._assignment = False, JOIN_EPOCH, None
                self._wake.set()
                return Changes()
            if self._lost:
                return Changes(lost=self._owned)
            if self._assignment is None or self._assignment == self._owned:
                return Changes()
            return Changes(revoked=self._owned - self._assignment,
                           assigned=self._assignment - self._owned)

    def resubscribe(self, topics: Iterable[str], pattern: str) -> None:
        """Change what this member subscribes to; the next heartbeat (sent at once) tells the
        coordinator, whose new assignment reaches poll() as ordinary revocations/assignments."""
        with self._lock:
            self._topics = tuple(sorted(set(topics)))
            self._pattern = pattern
        self._wake.set()

    def acknowledge(self, owned: Iterable[TopicPartition], *, lost: bool = False) -> None:
        """poll() now owns exactly `owned`; tell the coordinator at once."""
        with self._lock:
            self._owned = frozenset(owned)
            if lost:
                self._lost = False
                self._epoch = JOIN_EPOCH
                self._assignment = None
        self._wake.set()

    def leave(self, timeout_s: float = 5.0) -> None:
        """Stop heartbeating and leave the group (best effort: else the session times out)."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        with self._lock:
            epoch = self._epoch
        if epoch > 0:
            try:
                self._send(LEAVE_EPOCH, frozenset(), timeout_s)
            except errors.TidelogError as exc:
                _log.info("leaving group %s: %s (its session will time out instead)",
                          self.coordinator.group_id, exc)

    # --- heartbeat thread ----------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                interval = self._interval_s
            self._wake.wait(interval)
            self._wake.clear()
            if self._stop.is_set():
                return
            with self._lock:
                if self._lost or self._poll_timed_out:
                    continue  # poll() must drop the partitions before we join again
                if self._clock() - self._last_poll > self._max_poll_interval_ms / 1000:
                    self._poll_timed_out = True
                    self._lost = self._epoch > 0
                    epoch = self._epoch
                else:
                    epoch = -2
            if epoch != -2:
                _log.warning("group %s: poll() not called for max_poll_interval_ms=%d; leaving "
                             "the group (the next poll joins again)",
                             self.coordinator.group_id, self._max_poll_interval_ms)
                if epoch > 0:
                    try:
                        self._send(LEAVE_EPOCH, frozenset(), self._request_timeout_s)
                    except errors.TidelogError as exc:
                        self.last_error = exc
                continue
            self._heartbeat()

    def _heartbeat(self) -> None:
        with self._lock:
            epoch, owned = self._epoch, self._owned
        timeout_s = max(1.0, min(self._request_timeout_s, self._session_timeout_ms / 2000))
        try:
            response = self._send(epoch, owned, timeout_s)
        except (errors.UnknownMemberId, errors.FencedMemberEpoch) as exc:
            _log.warning("group %s: member %s fenced (%s); its partitions are lost, joining "
                         "again", self.coordinator.group_id, self.member_id, exc)
            with self._lock:
                self._lost = True
                self._epoch = JOIN_EPOCH
                self._assignment = None
            self.last_error = exc
            return
        except errors.TidelogError as exc:
            self.last_error = exc
            _log.info("group %s: heartbeat failed: %s", self.coordinator.group_id, exc)
            return
        self.last_error = None
        assignment = frozenset(tps_from_wire(response.assignment))  # type: ignore[attr-defined]
        with self._lock:
            if self._lost or self._stop.is_set():
                return
            self._epoch = response.member_epoch  # type: ignore[attr-defined]
            self._assignment = assignment
            self._interval_s = max(0.05, response.heartbeat_interval_ms / 1000)  # type: ignore[attr-defined]

    def _send(self, epoch: int, owned: frozenset[TopicPartition], timeout_s: float) -> object:
        from tidelog.proto import broker_pb2

        with self._lock:
            topics, pattern = self._topics, self._pattern
        request = broker_pb2.ConsumerGroupHeartbeatRequest(
            group_id=self.coordinator.group_id, member_id=self.member_id, member_epoch=epoch,
            subscribed_topic_names=topics, subscribed_topic_regex=pattern,
            server_assignor=self._assignor, owned=tps_to_wire(owned), owned_sent=True,
            session_timeout_ms=self._session_timeout_ms,
            rebalance_timeout_ms=self._max_poll_interval_ms, client_id=self._client_id)
        return self.coordinator.call("ConsumerGroupHeartbeat", request, timeout_s=timeout_s)
