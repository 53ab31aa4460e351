"""The client's view of the cluster: nodes, topics, partitions and their leaders.

The view is a cache refreshed by a Metadata call to any reachable node (the last one that answered
first, then the other known nodes, then the bootstrap list). Producer and consumer refresh it when a
request fails with NOT_LEADER / LEADER_NOT_AVAILABLE / an unreachable node, at most once per
retry_backoff_ms, and in any case every metadata_max_age_ms.

A paused or partitioned node answers nothing and keeps its connection open, so a call to it lasts
its whole deadline. Hence (issue 15) a Metadata call gets at most METADATA_ATTEMPT_S_MAX per node
and is hedged: without an answer after HEDGE_AFTER_S the next node is asked too, and the first
answer wins (client/hedged.py). A node that timed out or was overtaken is *slow* for SLOW_FOR_S:
asked last. Until the client first reached the cluster, each failed round is logged at INFO on the
``tidelog.client`` logger, and once bootstrap_timeout_s passed ClusterUnreachable (not retriable:
the callers' retry loops stop) names every address and its last error, so a wrong address or a
cluster that is down fails fast and says so.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from tidelog.client import errors
from tidelog.client.connection import Connections
from tidelog.client.hedged import first_answer
from tidelog.client.routing import retrying

__all__ = [
    "BOOTSTRAP_TIMEOUT_S",
    "HEDGE_AFTER_S",
    "METADATA_ATTEMPT_S_MAX",
    "SLOW_FOR_S",
    "ClusterDescription",
    "Metadata",
    "NodeDescription",
    "PartitionDescription",
    "TopicDescription",
]

#: the logger whose INFO lines a CLI shows on stderr while it waits (client/cli_common.py)
_client_log = logging.getLogger("tidelog.client")

#: a Metadata call is cheap: a node that has not answered in this long is paused or cut off
METADATA_ATTEMPT_S_MAX = 5.0
#: without an answer after this long, the same Metadata request also goes to the next node
HEDGE_AFTER_S = 0.3
#: a node that timed out or was overtaken is asked last for this long
SLOW_FOR_S = 30.0
#: default of the clients' bootstrap_timeout_s: how long to look for a first answering node
BOOTSTRAP_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeDescription:
    id: int
    address: str
    alive: bool
    voter: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class PartitionDescription:
    partition: int
    leader_id: int  # -1: no leader known
    leader_term: int
    replicas: tuple[int, ...]
    in_sync: tuple[int, ...]
    high_watermark: int  # -1 unless the answering node leads this partition
    log_end_offset: int
    log_start_offset: int


@dataclass(frozen=True, slots=True, kw_only=True)
class TopicDescription:
    name: str
    partitions: tuple[PartitionDescription, ...]
    configs: Mapping[str, str]
    internal: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterDescription:
    cluster_id: str
    metadata_leader_id: int
    nodes: tuple[NodeDescription, ...]
    topics: tuple[TopicDescription, ...]
    #: topics asked for by name that the cluster reported an error for
    topic_errors: Mapping[str, errors.TidelogError]


class Metadata:
    """Thread-safe metadata cache. Every method that may do I/O says so."""

    def __init__(
        self, connections: Connections, bootstrap: tuple[str, ...], *, request_timeout_ms: int,
        max_age_ms: int, retry_backoff_ms: int, clock: Callable[[], float] = time.monotonic,
        bootstrap_timeout_s: float = BOOTSTRAP_TIMEOUT_S,
    ) -> None:
        self._connections = connections
        self._bootstrap = bootstrap
        self._timeout_s = request_timeout_ms / 1000
        self._max_age_s = max_age_ms / 1000
        self._backoff_s = retry_backoff_ms / 1000
        self._clock = clock
        self._lock = threading.Lock()  # guards the caches; I/O happens outside it
        self._refresh_lock = threading.Lock()  # one refresh at a time
        self._topics: dict[str, TopicDescription] = {}
        self._nodes: dict[int, NodeDescription] = {}
        self._refreshed_at: dict[str, float] = {}
        self._stale: set[str] = set()
        self._last_good: str | None = None
        self._bootstrap_timeout_s = bootstrap_timeout_s
        self._reached = False  # some node answered once: past the bootstrap phase
        self._first_call_at: float | None = None
        self._last_errors: dict[str, str] = {}  # per address, for ClusterUnreachable
        self._slow_until: dict[str, float] = {}

    # --- I/O ------------------------------------------------------------------------------------

    def describe(
        self, topics: Iterable[str] | None = None, *, include_internal: bool = False,
        timeout_s: float | None = None,
    ) -> ClusterDescription:
        """One Metadata call (I/O); also updates the cache. topics=None: all topics.
        `timeout_s` bounds the whole call (a poll's budget); default: the per-node limits."""
        from tidelog.proto import broker_pb2

        wanted = list(topics or ())
        request = broker_pb2.MetadataRequest(topics=wanted, include_internal=include_internal)
        response = self.call_any("Metadata", request,
                                 attempt_s=min(self._timeout_s, METADATA_ATTEMPT_S_MAX),
                                 hedge_after_s=HEDGE_AFTER_S, timeout_s=timeout_s)
        return self._learn(_description_from(response))

    def _learn(self, description: ClusterDescription) -> ClusterDescription:
        """A Metadata answer into the cache (no I/O; the asyncio twin shares it)."""
        now = self._clock()
        with self._lock:
            for node in description.nodes:
                self._nodes[node.id] = node
            for topic in description.topics:
                self._topics[topic.name] = topic
                self._refreshed_at[topic.name] = now
                self._stale.discard(topic.name)
            for name, error in description.topic_errors.items():
                if isinstance(error, errors.TopicNotFound):
                    self._topics.pop(name, None)
                self._refreshed_at[name] = now
        return description

    def refresh(self, topics: Iterable[str], *, timeout_s: float | None = None) -> None:
        """Refresh these topics unless refreshed within retry_backoff_ms (I/O, bounded by
        `timeout_s` when given)."""
        due = self._due(topics)
        if not due:
            return
        with self._refresh_lock:
            self.describe(due, timeout_s=timeout_s)

    def topic(self, name: str, *, timeout_s: float) -> TopicDescription:
        """The topic's description, fetched if missing or old (may do I/O).

        Raises TopicNotFound when the cluster says it does not exist, Timeout when the cluster
        cannot be reached within timeout_s."""
        cached = self._topics.get(name)
        if cached is not None and not self._is_old(name):
            return cached
        def attempt(left_s: float) -> TopicDescription:
            description = self.describe([name], timeout_s=left_s)
            leader = self.not_found_to_confirm(description, name)
            if leader is not None:
                description = self._confirmed_by(leader, name, description, left_s)
            error = description.topic_errors.get(name)
            if error is not None:
                raise error  # TopicNotFound is final; a retriable one is tried again
            found = self._topics.get(name)
            if found is None:
                raise errors.LeaderNotAvailable(f"topic {name!r} missing from the answer")
            return found

        return retrying(attempt, what=f"metadata of topic {name!r}", timeout_s=timeout_s,
                        backoff_s=self._backoff_s, clock=self._clock)

    def _confirmed_by(self, leader: str, name: str, answer: ClusterDescription,
                      timeout_s: float) -> ClusterDescription:
        """The metadata leader's answer for `name` (I/O); `answer` when it cannot be asked."""
        from tidelog.proto import broker_pb2

        try:
            response = self._connections.call(
                leader, "Metadata", broker_pb2.MetadataRequest(topics=[name]),
                timeout_s=min(timeout_s, self._timeout_s, METADATA_ATTEMPT_S_MAX))
        except errors.TidelogError:
            return answer
        return self._learn(_description_from(response))

    def not_found_to_confirm(self, description: ClusterDescription, name: str) -> str | None:
        """The metadata leader's address when the answer says `name` does not exist (no I/O).

        Any node answers Metadata from its own copy of the metadata, which may lag the metadata
        leader's by a moment: a topic another client has just created is then "not found" there
        (Kafka makes UNKNOWN_TOPIC_OR_PARTITION retriable for the same reason). A "not found" is
        final only once the metadata leader, which applies each change first, says so too."""
        if not isinstance(description.topic_errors.get(name), errors.TopicNotFound):
            return None
        leader = description.metadata_leader_id
        return self.node_address(leader) if leader >= 0 else None

    # --- cache reads (no I/O) ------------------------------------------------------------------

    def cached_topic(self, name: str) -> TopicDescription | None:
        return self._topics.get(name)

    def leader_address(self, topic: str, partition: int) -> str | None:
        """HOST:PORT of the partition's leader, None when unknown (then call refresh)."""
        description = self._topics.get(topic)
        if description is None or partition >= len(description.partitions):
            return None
        leader_id = description.partitions[partition].leader_id
        node = self._nodes.get(leader_id)
        return node.address if node is not None else None

    def node_address(self, node_id: int) -> str | None:
        node = self._nodes.get(node_id)
        return node.address if node is not None else None

    def nodes(self) -> list[NodeDescription]:
        with self._lock:
            return sorted(self._nodes.values(), key=lambda n: n.id)

    def mark_stale(self, topic: str, *, leader_id: int = -1, leader_address: str = "",
                   partition: int = -1) -> None:
        """Note that a request found the cache wrong. A NOT_LEADER hint, when present, is applied
        at once (the next request goes to the hinted leader); a refresh follows in any case."""
        with self._lock:
            self._stale.add(topic)
            if leader_id < 0 or partition < 0:
                return
            description = self._topics.get(topic)
            if description is None or partition >= len(description.partitions):
                return
            if leader_address:
                old = self._nodes.get(leader_id)
                self._nodes[leader_id] = NodeDescription(
                    id=leader_id, address=leader_address, alive=True,
                    voter=old.voter if old else False,
                )
            parts = list(description.partitions)
            old_part = parts[partition]
            parts[partition] = PartitionDescription(
                partition=partition, leader_id=leader_id, leader_term=old_part.leader_term,
                replicas=old_part.replicas, in_sync=old_part.in_sync,
                high_watermark=-1, log_end_offset=-1, log_start_offset=old_part.log_start_offset,
            )
            self._topics[topic] = TopicDescription(
                name=topic, partitions=tuple(parts), configs=description.configs,
                internal=description.internal,
            )

    def mark_slow(self, address: str) -> None:
        """`address` did not answer in time: ask it last for SLOW_FOR_S."""
        with self._lock:
            self._slow_until[address] = self._clock() + SLOW_FOR_S

    def is_slow(self, address: str) -> bool:
        return self._slow_until.get(address, 0.0) > self._clock()

    def stale_topics(self) -> set[str]:
        with self._lock:
            now = self._clock()
            old = {n for n, t in self._refreshed_at.items()
                   if n in self._topics and now - t >= self._max_age_s}
            return set(self._stale) | old

    # --- helpers -------------------------------------------------------------------------------

    def _due(self, topics: Iterable[str]) -> list[str]:
        """The topics not refreshed within retry_backoff_ms, sorted."""
        names = sorted(set(topics))
        now = self._clock()
        with self._lock:
            return [n for n in names if now - self._refreshed_at.get(n, -1e18) >= self._backoff_s]

    def _is_old(self, name: str) -> bool:
        refreshed = self._refreshed_at.get(name)
        return refreshed is None or self._clock() - refreshed >= self._max_age_s

    def _candidates(self) -> list[str]:
        """Addresses to ask, in order: the last that answered, the known live nodes, the bootstrap
        list; slow nodes last (still asked: they may be the only ones left)."""
        ordered: list[str] = []
        if self._last_good:
            ordered.append(self._last_good)
        with self._lock:
            ordered.extend(n.address for n in self._nodes.values() if n.alive)
        ordered.extend(self._bootstrap)
        seen: set[str] = set()
        unique = [a for a in ordered if not (a in seen or seen.add(a))]
        return sorted(unique, key=self.is_slow)  # stable: the order above within each part

    def call_any(
        self, method: str, request: object, *, attempt_s: float | None = None,
        hedge_after_s: float | None = None, timeout_s: float | None = None,
    ) -> object:
        """The call on the first node that answers (I/O). Each node gets `attempt_s` (default
        request_timeout_ms); with `hedge_after_s` the next node is asked when the last one has
        not answered that long (only for requests safe to send twice), else once it failed.
        Raises NoBrokersAvailable (retriable: the caller's loop tries again) when no node
        answered; ClusterUnreachable instead once bootstrap_timeout_s passed since the first
        call without any node ever answering. Before that, each failed round is logged at INFO
        on the ``tidelog.client`` logger (a CLI shows these retries)."""
        if self._needs_probe(method):
            # Find a node with a cheap hedged Metadata call first: the bootstrap phase's short
            # attempts must not cut a request that takes long by design (CreateTopics waits
            # for leaders) and may not be sent twice.
            from tidelog.proto import broker_pb2

            self.call_any("Metadata", broker_pb2.MetadataRequest(topics=[]),
                          attempt_s=min(self._timeout_s, METADATA_ATTEMPT_S_MAX),
                          hedge_after_s=HEDGE_AFTER_S, timeout_s=timeout_s)
        budget = self._attempt_budget(attempt_s, timeout_s)
        addresses = self._candidates()
        result = first_answer(self._connections, addresses, method, request,
                              attempt_s=budget, hedge_after_s=hedge_after_s, clock=self._clock)
        for address in result.slow:
            self.mark_slow(address)
        if result.address is not None:
            self._answered(result.address)
            return result.answer
        raise self._round_failed(method, addresses, result.failures)

    # --- call_any's rules, without the I/O (shared with client/aio/metadata.py) ---------------

    def _needs_probe(self, method: str) -> bool:
        """Starts the bootstrap clock on the first call. True while no node ever answered and
        `method` is not Metadata: find a node with a cheap Metadata call first, since the
        bootstrap phase's short attempts must not cut a request that takes long by design
        (CreateTopics waits for leaders) and may not be sent twice."""
        if self._first_call_at is None:
            self._first_call_at = self._clock()
        return not self._reached and method != "Metadata"

    def _attempt_budget(self, attempt_s: float | None, timeout_s: float | None) -> float:
        """One node's time: `attempt_s` (default request_timeout_ms) within `timeout_s`; while
        bootstrapping, short enough to leave time for further rounds before the deadline."""
        budget = min(attempt_s or self._timeout_s,
                     float("inf") if timeout_s is None else max(0.05, timeout_s))
        if not self._reached:  # a silent address must leave time for further rounds
            budget = min(budget, max(0.5, self._bootstrap_timeout_s / 3),
                         max(0.05, self._bootstrap_deadline() - self._clock()))
        return budget

    def _answered(self, address: str) -> None:
        self._last_good = address
        self._reached = True

    def _round_failed(self, method: str, addresses: Iterable[str],
                      failed: Mapping[str, object]) -> errors.TidelogError:
        """The error to raise when no node answered a round (`failed`: address -> error):
        ClusterUnreachable past bootstrap_timeout_s without any node ever answering, else
        NoBrokersAvailable (retriable), with an INFO retry line while bootstrapping."""
        with self._lock:
            self._last_errors.update((a, str(e)) for a, e in failed.items())
        failures = "; ".join(f"{a}: {e}" for a, e in failed.items())
        if not self._reached:
            left = self._bootstrap_deadline() - self._clock()
            if left <= 0:
                return self._unreachable(self._clock() - (self._first_call_at or 0.0))
            _client_log.info("no node answers at %s (%s); retrying for up to %.1f s more "
                             "(bootstrap_timeout_s=%g)", ",".join(addresses), failures, left,
                             self._bootstrap_timeout_s)
        return errors.NoBrokersAvailable(
            f"no node answered {method}; tried {failures} (check the bootstrap addresses "
            "(--bootstrap / TIDELOG_BOOTSTRAP) and that the cluster is up)")

    def _bootstrap_deadline(self) -> float:
        return (self._first_call_at or 0.0) + self._bootstrap_timeout_s

    def _unreachable(self, waited_s: float) -> errors.ClusterUnreachable:
        with self._lock:
            last = {a: self._last_errors.get(a, "not tried") for a in self._bootstrap}
            last.update((a, e) for a, e in self._last_errors.items() if a not in last)
        per_address = "; ".join(f"{a}: {e}" for a, e in last.items())
        return errors.ClusterUnreachable(
            f"no node answers at {','.join(self._bootstrap)} after {waited_s:.1f} s "
            f"(bootstrap_timeout_s={self._bootstrap_timeout_s:g}); last error per address: "
            f"{per_address}. Check the bootstrap addresses (--bootstrap / TIDELOG_BOOTSTRAP) and "
            "that the cluster is up", last_errors=last)


def _description_from(response: object) -> ClusterDescription:
    nodes = tuple(
        NodeDescription(id=n.id, address=n.address, alive=n.alive, voter=n.voter)
        for n in response.nodes  # type: ignore[attr-defined]
    )
    topics: list[TopicDescription] = []
    topic_errors: dict[str, errors.TidelogError] = {}
    for t in response.topics:  # type: ignore[attr-defined]
        if t.error:
            topic_errors[t.name] = errors.from_code(
                t.error, t.error_message, subject=f"topic {t.name!r}"
            )
            continue
        partitions = sorted(
            (
                PartitionDescription(
                    partition=p.partition, leader_id=p.leader_id, leader_term=p.leader_term,
                    replicas=tuple(p.replicas), in_sync=tuple(p.in_sync),
                    high_watermark=p.high_watermark, log_end_offset=p.log_end_offset,
                    log_start_offset=p.log_start_offset,
                )
                for p in t.partitions
            ),
            key=lambda p: p.partition,
        )
        topics.append(TopicDescription(
            name=t.name, partitions=tuple(partitions), configs=dict(t.configs),
            internal=t.internal,
        ))
    return ClusterDescription(
        cluster_id=response.cluster_id,  # type: ignore[attr-defined]
        metadata_leader_id=response.metadata_leader_id,  # type: ignore[attr-defined]
        nodes=nodes, topics=tuple(topics), topic_errors=topic_errors,
    )
