"""`tidelog top`'s poll: one Snapshot of the cluster through the client's own RPCs.

Theory of operation. A poll asks every known node for its Metadata at once (one thread per
node): a node that answers is up, one that does not within `rpc_timeout_s` is down. Each node
fills the high watermark of the partitions it leads only, so a partition's end offset comes
from its leader's own answer (the highest term wins if two claim it), and the nodes that
answered are the only ones asked anything else this poll. Then, again in parallel:

- groups: ListGroups on every up node (each lists the groups it coordinates), then OffsetFetch
  at the coordinator that listed the group; lag in records = end offset - committed offset -
  the control records between them (a leader's no-op, membership changes: the Fetch answer's
  control_records, the rule of `tidelog group describe`, client/group_lag.py), kept per
  (partition, committed) with the end offset it was measured at and asked again when the end
  moved; lag in seconds = now - the timestamp of the record at the committed offset (the first
  one not yet consumed), read with the same small Fetch at the partition's leader. That
  timestamp never changes for a given offset, so it is cached;
- queues: ListQueues on every up node, then DescribeQueue at the coordinator that listed it
  (depth, in flight, oldest unacked age, DLQ depth, acked total).

Every RPC has the same short deadline and is tried once: a poll never waits on a dead node for
more than one deadline per phase, and what failed is named in Snapshot.problems instead. Counts
are bounded (GROUPS_MAX, QUEUES_MAX, LAG_FETCHES_MAX per poll, the timestamp cache).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from tidelog.client import errors
from tidelog.client.config import parse_bootstrap
from tidelog.client.connection import Connections
from tidelog.client.metadata import Metadata
from tidelog.client.security import ClientSecurity
from tidelog.client.top_model import (
    GroupLag,
    NodeState,
    NodeView,
    PartitionView,
    QueueView,
    Snapshot,
)

__all__ = ["GROUPS_MAX", "LAG_FETCHES_MAX", "QUEUES_MAX", "Gatherer"]

#: groups and queues followed per poll (the first by name); the rest are counted in problems
GROUPS_MAX = 100
QUEUES_MAX = 100
#: lag-seconds Fetches per poll (the partitions lagging most in records first)
LAG_FETCHES_MAX = 64
#: bytes one lag-seconds Fetch answer may hold (each partition is asked for one batch)
LAG_FETCH_BYTES_MAX = 1024 * 1024
#: (topic, partition, offset) -> timestamp entries kept; cleared whole when full
TIMESTAMP_CACHE_MAX = 4096
PROBLEMS_MAX = 8
#: Metadata deadline for a node that did not answer the last poll: a node that stays paused or
#: partitioned away costs this per poll instead of a whole rpc_timeout_s; one that came back
#: answers well within it (a refused connection fails at once anyway)
DOWN_NODE_TIMEOUT_S = 0.3
_THREADS_MAX = 16

T = TypeVar("T")


class Gatherer:
    """Takes snapshots of one cluster; keeps its channels (and the known nodes) between polls.
    Not thread-safe: one poller thread calls take()."""

    def __init__(self, bootstrap: str | Sequence[str], *, security: ClientSecurity | None = None,
                 rpc_timeout_s: float = 1.0, clock: Callable[[], float] = time.monotonic,
                 wall_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000) -> None:
        from tidelog.client.queue import QueueRpc

        self._bootstrap = parse_bootstrap(bootstrap)
        self._timeout_s = rpc_timeout_s
        self._clock = clock
        self._wall_ms = wall_ms
        self._connections = Connections(security, client_id="tidelog-top")
        # Only QueueRpc needs a Metadata; its node list is never used here (we pass addresses).
        metadata = Metadata(self._connections, self._bootstrap,
                            request_timeout_ms=int(rpc_timeout_s * 1000), max_age_ms=0,
                            retry_backoff_ms=100)
        self._queues = QueueRpc(self._connections, metadata, self._bootstrap)
        self._known: dict[str, int] = {}  # address -> node id, from earlier answers
        self._timestamps: dict[tuple[str, int, int], int] = {}
        # (topic, partition, committed) -> where to read on: its batch held only control records
        self._follow: dict[tuple[str, int, int], int] = {}
        # (topic, partition, committed) -> (control records from it to the end, that end offset)
        self._controls: dict[tuple[str, int, int], tuple[int, int]] = {}
        self._failures: dict[str, str] = {}  # address -> why its last Metadata call failed
        self._pool = ThreadPoolExecutor(max_workers=_THREADS_MAX,
                                        thread_name_prefix="tidelog-top")

    @property
    def bootstrap(self) -> tuple[str, ...]:
        return self._bootstrap

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._connections.close()

    def take(self) -> Snapshot:
        """One poll (I/O, bounded by a few rpc_timeout_s). Never raises for the cluster's
        failures: a cluster that does not answer is a Snapshot whose nodes are all down."""
        started = self._clock()
        wall_ms = self._wall_ms()
        problems: list[str] = []
        answers = self._ask_metadata(problems)
        nodes, up = self._nodes(answers, problems)
        if not up:
            return Snapshot(taken_s=started, wall_ms=wall_ms, poll_s=self._clock() - started,
                            nodes=nodes, problems=tuple(problems[:PROBLEMS_MAX]))
        partitions = _partitions(answers)
        leaders = Counter(p.leader_id for p in partitions)
        nodes = tuple(n if n.state is NodeState.DOWN else _with_leaders(n, leaders[n.id])
                      for n in nodes)
        address_of = {n.id: n.address for n in nodes}
        groups_job = self._pool.submit(self._groups, up, partitions, address_of, wall_ms)
        queues_job = self._pool.submit(self._queue_views, up, address_of)
        groups, lags, group_problems = groups_job.result()
        queues, queue_problems = queues_job.result()
        problems += group_problems + queue_problems
        first = next(iter(answers.values()))
        return Snapshot(
            taken_s=started, wall_ms=wall_ms, poll_s=self._clock() - started,
            cluster_id=first.cluster_id, metadata_leader_id=_metadata_leader(answers.values()),
            nodes=nodes, partitions=tuple(partitions), groups=groups, lags=tuple(lags),
            queues=tuple(queues), problems=tuple(problems[:PROBLEMS_MAX]))

    # --- nodes and partitions --------------------------------------------------------------------

    def _ask_metadata(self, problems: list[str]) -> dict[str, Any]:
        """address -> MetadataResponse of every node that answered (all topics, internal ones
        included: their leaders count too)."""
        from tidelog.proto import broker_pb2

        addresses = list(dict.fromkeys([*self._known, *self._bootstrap]))
        request = broker_pb2.MetadataRequest(include_internal=True)
        down_before = set(self._failures)

        def ask(address: str) -> Any:
            timeout_s = self._timeout_s
            if address in down_before:  # still down, most likely: do not wait long for it
                timeout_s = min(timeout_s, DOWN_NODE_TIMEOUT_S)
            return self._connections.call(address, "Metadata", request, timeout_s=timeout_s)

        results = self._each(addresses, ask)
        answers: dict[str, Any] = {}
        for address, (response, error) in results.items():
            if error is None:
                answers[address] = response
            elif address not in self._known:  # a known node's failure is shown on its row
                problems.append(f"{address}: {_short(error)}")
        for response in answers.values():
            for n in response.nodes:
                self._known.setdefault(n.address, n.id)
        self._failures = {a: f"no answer: {type(e).__name__}" for a, (_, e) in results.items()
                          if e is not None}
        return answers

    def _nodes(self, answers: dict[str, Any],
               problems: list[str]) -> tuple[tuple[NodeView, ...], list[str]]:
        """Every node some answer names (or every known address when none answered), and the
        addresses of those that answered."""
        seen: dict[int, Any] = {}
        alive_votes: dict[int, list[bool]] = {}
        for response in answers.values():
            for n in response.nodes:
                seen.setdefault(n.id, n)
                alive_votes.setdefault(n.id, []).append(n.alive)
        if not seen:
            problems.insert(0, "no node answered: tried " + ", ".join(
                dict.fromkeys([*self._known, *self._bootstrap])))
            return tuple(
                NodeView(id=node_id, address=address, state=NodeState.DOWN, voter=False,
                         leaders=0, peers_see_alive=None,
                         problem=self._failures.get(address, "no answer"))
                for address, node_id in sorted(self._known.items(), key=lambda kv: kv[1])), []
        views = []
        for node_id in sorted(seen):
            n = seen[node_id]
            up = n.address in answers
            views.append(NodeView(
                id=node_id, address=n.address, state=NodeState.UP if up else NodeState.DOWN,
                voter=n.voter, leaders=0, peers_see_alive=any(alive_votes[node_id]),
                problem="" if up else self._failures.get(n.address, "not asked yet")))
        return tuple(views), [v.address for v in views if v.state is NodeState.UP]

    # --- groups ----------------------------------------------------------------------------------

    def _groups(self, up: list[str], partitions: list[PartitionView],
                address_of: dict[int, str], wall_ms: int
                ) -> tuple[dict[str, tuple[str, int]], list[GroupLag], list[str]]:
        from tidelog.proto import broker_pb2

        problems: list[str] = []
        listed: dict[str, Any] = {}
        request = broker_pb2.ListGroupsRequest()
        for address, (response, error) in self._each(up, lambda a: self._connections.call(
                a, "ListGroups", request, timeout_s=self._timeout_s)).items():
            if error is not None:
                problems.append(f"ListGroups at {address}: {_short(error)}")
                continue
            for g in response.groups:
                listed[g.group_id] = g
        names = sorted(listed)
        if len(names) > GROUPS_MAX:
            problems.append(f"{len(names) - GROUPS_MAX} more groups not shown")
            names = names[:GROUPS_MAX]
        groups = {name: (listed[name].state, listed[name].members) for name in names}

        def fetch(name: str) -> Any:
            address = address_of.get(listed[name].coordinator_id)
            if address is None:
                raise errors.CoordinatorNotAvailable(f"group {name!r}: coordinator unknown")
            return self._connections.call(address, "OffsetFetch", broker_pb2.OffsetFetchRequest(
                group_id=name), timeout_s=self._timeout_s)

        ends = {(p.topic, p.partition): p.end_offset for p in partitions}
        lags: list[GroupLag] = []
        for name, (response, error) in self._each(names, fetch).items():
            if error is not None:
                problems.append(f"group {name}: {_short(error)}")
                continue
            for p in response.partitions:
                end = ends.get((p.topic, p.partition), -1)
                if p.offset < 0 or end < 0:
                    continue
                lags.append(GroupLag(group=name, topic=p.topic, partition=p.partition,
                                     committed=p.offset, end_offset=end,
                                     lag_records=max(0, end - p.offset),
                                     lag_seconds=0.0 if end <= p.offset else None))
        leader_of = {(p.topic, p.partition): address_of.get(p.leader_id) for p in partitions}
        return groups, self._lag_seconds(lags, leader_of, wall_ms, problems), problems

    def _lag_seconds(self, lags: list[GroupLag], leader_of: dict[tuple[str, int], str | None],
                     wall_ms: int, problems: list[str]) -> list[GroupLag]:
        """Fill lag_seconds of the lagging partitions from the cached or fetched timestamps."""
        worst: dict[tuple[str, int, int], int] = {}
        for g in lags:
            key = (g.topic, g.partition, g.committed)
            counted = self._controls.get(key)
            stale = g.lag_records > 0 and (counted is None or counted[1] != g.end_offset)
            if (g.lag_seconds is None and key not in self._timestamps) or stale:
                worst[key] = max(worst.get(key, 0), g.lag_records)
        wanted = sorted(worst, key=lambda k: (-worst[k], k))
        by_leader: dict[str, list[tuple[str, int, int]]] = {}
        for key in wanted[:LAG_FETCHES_MAX]:
            leader = leader_of.get(key[:2])
            if leader is not None:
                by_leader.setdefault(leader, []).append(key)
        found: dict[tuple[str, int, int], int] = {}
        waiting_none: set[tuple[str, int, int]] = set()  # only control records: 0 s this poll
        for leader, (got, error) in self._each(list(by_leader), lambda a: self._timestamps_at(
                a, by_leader[a])).items():
            if error is not None:
                problems.append(f"lag seconds from {leader}: {_short(error)}")
                continue
            for key, stamp in got.items():
                if stamp is None:
                    waiting_none.add(key)
                else:
                    found[key] = stamp
        if len(self._timestamps) + len(found) > TIMESTAMP_CACHE_MAX:
            self._timestamps.clear()
        self._timestamps.update(found)
        if len(self._controls) > TIMESTAMP_CACHE_MAX:
            self._controls.clear()
        out = []
        for g in lags:
            key = (g.topic, g.partition, g.committed)
            stamp = self._timestamps.get(key)
            seconds = g.lag_seconds
            # the control records last counted (an end moved since: those up to that end)
            records = max(0, g.lag_records - self._controls.get(key, (0, 0))[0])
            if records == 0:
                seconds = 0.0
            elif seconds is None and stamp is not None:
                seconds = max(0.0, (wall_ms - stamp) / 1000)
            elif seconds is None and key in waiting_none:
                seconds = 0.0
            out.append(g if (seconds, records) == (g.lag_seconds, g.lag_records) else GroupLag(
                group=g.group, topic=g.topic, partition=g.partition, committed=g.committed,
                end_offset=g.end_offset, lag_records=records, lag_seconds=seconds))
        return out

    def _timestamps_at(self, leader: str, keys: list[tuple[str, int, int]]
                       ) -> dict[tuple[str, int, int], int | None]:
        """One Fetch at the leader: the timestamp of the first data record at or after each
        (topic, partition, committed offset), for those it could be read for. The decoding is
        the Admin's (tidelog.client.group_lag.first_record_timestamp: control batches passed
        over); where the batch held none, the next poll reads on from the batch after it. None:
        nothing but control records up to the end, so nothing waits (0 s, not cached: the next
        data record will wait from its own timestamp)."""
        from tidelog.client.group_lag import first_record_timestamp
        from tidelog.proto import broker_pb2

        at = {key: self._follow.get(key, key[2]) for key in keys}
        request = broker_pb2.FetchRequest(  # max_bytes 1: the node sends the batch holding it
            partitions=[broker_pb2.FetchPartition(topic=t, partition=p, offset=at[(t, p, c)],
                                                  max_bytes=1) for t, p, c in keys],
            max_wait_ms=0, min_bytes=0, max_bytes=LAG_FETCH_BYTES_MAX)
        response = self._connections.call(leader, "Fetch", request, timeout_s=self._timeout_s)
        key_of = {(t, p): (t, p, c) for t, p, c in keys}
        out: dict[tuple[str, int, int], int] = {}
        for result in response.partitions:
            key = key_of.get((result.topic, result.partition))
            if key is None or result.error:
                continue  # not led there any more: next poll
            # from the committed offset: the offsets before a followed position are all control
            # records (their batches held nothing else), then the answer's own count
            self._controls[key] = (at[key] - key[2] + result.control_records,
                                   result.high_watermark)
            if not result.batches:
                continue  # the answer's budget ran out: the timestamp next poll
            stamp, after = first_record_timestamp(bytes(result.batches), at[key])
            if stamp is not None:
                out[key] = stamp
                self._follow.pop(key, None)
            elif after >= result.high_watermark:  # only control records up to the end
                out[key] = None
            elif len(self._follow) < TIMESTAMP_CACHE_MAX:
                self._follow[key] = after
        return out

    # --- queues ----------------------------------------------------------------------------------

    def _queue_views(self, up: list[str], address_of: dict[int, str]
                     ) -> tuple[list[QueueView], list[str]]:
        from tidelog.client.queue_admin import stats_info
        from tidelog.proto import queue_pb2

        problems: list[str] = []
        listed: dict[str, Any] = {}
        for address, (response, error) in self._each(up, lambda a: self._queues.call(
                a, "ListQueues", queue_pb2.ListQueuesRequest(),
                timeout_s=self._timeout_s)).items():
            if error is not None:
                problems.append(f"ListQueues at {address}: {_short(error)}")
                continue
            for q in response.queues:
                listed[q.name] = q
        names = sorted(listed)
        if len(names) > QUEUES_MAX:
            problems.append(f"{len(names) - QUEUES_MAX} more queues not shown")
            names = names[:QUEUES_MAX]

        def describe(name: str) -> Any:
            address = address_of.get(listed[name].coordinator_id)
            if address is None:
                raise errors.CoordinatorNotAvailable(f"queue {name!r}: coordinator unknown")
            return self._queues.call(address, "DescribeQueue",
                                     queue_pb2.DescribeQueueRequest(queue=name),
                                     timeout_s=self._timeout_s)

        views = []
        for name, (response, error) in self._each(names, describe).items():
            q = listed[name]
            if error is not None:
                problems.append(f"queue {name}: {_short(error)}")
                views.append(QueueView(name=name, coordinator_id=q.coordinator_id,
                                       depth=q.depth, in_flight=q.in_flight,
                                       oldest_unacked_age_s=None, dlq_depth=None,
                                       acked_total=None, consumers=None))
                continue
            s = stats_info(response.stats)
            views.append(QueueView(name=name, coordinator_id=response.coordinator_id,
                                   depth=s.depth, in_flight=s.in_flight,
                                   oldest_unacked_age_s=s.oldest_unacked_age_ms / 1000,
                                   dlq_depth=s.dlq_depth, acked_total=s.acked_total,
                                   consumers=s.consumers))
        return views, problems

    # --- helpers ---------------------------------------------------------------------------------

    def _each(self, items: Iterable[T], call: Callable[[T], Any]
              ) -> dict[T, tuple[Any, BaseException | None]]:
        """call(item) for every item at once; item -> (result, None) or (None, the error).
        Each call carries its own deadline, so this returns within about one of them."""
        jobs = {item: self._pool.submit(call, item) for item in items}
        out: dict[T, tuple[Any, BaseException | None]] = {}
        for item, job in jobs.items():
            try:
                out[item] = (job.result(), None)
            except Exception as exc:  # noqa: BLE001 - every failure is shown, none is fatal
                out[item] = (None, exc)
        return out


def _partitions(answers: dict[str, Any]) -> list[PartitionView]:
    """Each partition as its leader reported it: the answer that filled the high watermark (only
    a leader does), the highest term first; else the hint most answers agree on."""
    best: dict[tuple[str, int], tuple[int, Any, Any]] = {}
    hints: dict[tuple[str, int], Counter[int]] = {}
    for response in answers.values():
        for t in response.topics:
            if t.error:
                continue
            for p in t.partitions:
                key = (t.name, p.partition)
                hints.setdefault(key, Counter())[p.leader_id] += 1
                claims = p.high_watermark >= 0
                rank = (1 if claims else 0) * (1 << 62) + p.leader_term
                if key not in best or rank > best[key][0]:
                    best[key] = (rank, t, p)
    out = []
    for key in sorted(best):
        _, t, p = best[key]
        claims = p.high_watermark >= 0
        leader = p.leader_id if claims else hints[key].most_common(1)[0][0]
        out.append(PartitionView(topic=t.name, partition=p.partition, internal=t.internal,
                                 leader_id=leader, replicas=tuple(p.replicas),
                                 in_sync=tuple(p.in_sync) if claims else (),
                                 end_offset=p.high_watermark if claims else -1))
    return out


def _with_leaders(node: NodeView, leaders: int) -> NodeView:
    return NodeView(id=node.id, address=node.address, state=node.state, voter=node.voter,
                    leaders=leaders, peers_see_alive=node.peers_see_alive, problem=node.problem)


def _metadata_leader(responses: Iterable[Any]) -> int:
    votes = Counter(r.metadata_leader_id for r in responses if r.metadata_leader_id >= 0)
    return votes.most_common(1)[0][0] if votes else -1


def _short(error: BaseException) -> str:
    """One line for the screen: the error's kind and the start of its message."""
    text = str(error).splitlines()[0] if str(error) else ""
    name = type(error).__name__
    return f"{name}: {text[:120]}" if text else name
