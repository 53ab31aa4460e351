"""The one leader-routing retry loop of the sync client, in metadata.py's terms.

Why one: offsets.py, fetcher.py, admin.py and metadata.py each had their own loop of "find the
leader, call it, on NOT_LEADER / LEADER_NOT_AVAILABLE / an unreachable node refresh the metadata
and try again with backoff, until a deadline", and they drifted (one followed NOT_LEADER's hint,
one did not; one backed off exponentially, the others not at all). Three layers:

* :func:`retrying` — the bounded loop itself: each attempt gets the time left; a retriable error
  goes to ``on_retriable`` (mark stale, remember a hint) and waits a growing backoff; a
  non-retriable one is raised; past the deadline, ``Timeout`` names the last error.
* :func:`call_partition_leader` — one request to a partition's leader (Produce-like calls).
* :func:`call_metadata_leader` — a request any node accepts but only the metadata leader
  executes (CreateTopics, AlterConfigs...): NOT_LEADER's hint is followed at once.
* :func:`call_first_answering` — a request to another service (Quotas, Security,
  NodeMembership) on the first of some nodes that answers, each round retried until a deadline.
* :func:`by_leader` and :func:`note_failure` — the two steps of loops that batch many partitions
  per leader (ListOffsets, Fetch): group by the cached leader, and after a failure mark the
  metadata stale, applying a NOT_LEADER hint at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from tidelog.client import errors

if TYPE_CHECKING:  # metadata.py itself uses `retrying`
    from tidelog.client.connection import Connections
    from tidelog.client.metadata import Metadata
    from tidelog.client.records import TopicPartition

__all__ = ["by_leader", "call_first_answering", "call_metadata_leader", "call_partition_leader",
           "note_failure", "result_error", "retrying"]

T = TypeVar("T")

_BACKOFF_MAX_S = 1.0
_ATTEMPT_S_MIN = 0.1


def retrying(
    attempt: Callable[[float], T], *, what: str, timeout_s: float, backoff_s: float,
    on_retriable: Callable[[errors.TidelogError], None] = lambda error: None,
    backoff_max_s: float = _BACKOFF_MAX_S, clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """``attempt(seconds_left)`` until it returns. A retriable TidelogError calls
    ``on_retriable(error)`` and retries after ``backoff_s`` (doubling up to ``backoff_max_s``,
    never past the deadline); any other error is raised. After ``timeout_s``: Timeout."""
    deadline = clock() + timeout_s
    tries = 0
    while True:
        try:
            return attempt(max(_ATTEMPT_S_MIN, deadline - clock()))
        except errors.TidelogError as exc:
            if not exc.retriable:
                raise
            last_error = exc
            on_retriable(exc)
        tries += 1
        left = deadline - clock()
        if left <= 0:
            raise errors.Timeout(f"{what} did not succeed within {timeout_s:.1f} s "
                                 f"(last error: {last_error})")
        sleep(min(left, backoff_max_s, backoff_s * 2 ** min(tries - 1, 10)))


def by_leader(metadata: Metadata, tps: Iterable[TopicPartition]
              ) -> dict[str, list[TopicPartition]]:
    """The partitions grouped by their cached leader's address; one with no known leader is
    left out and its topic marked stale (the caller refreshes before the next round)."""
    grouped: dict[str, list[TopicPartition]] = {}
    for tp in tps:
        leader = metadata.leader_address(tp.topic, tp.partition)
        if leader is None:
            metadata.mark_stale(tp.topic)
        else:
            grouped.setdefault(leader, []).append(tp)
    return grouped


def note_failure(metadata: Metadata, tp: TopicPartition, error: errors.TidelogError,
                 leader_id: int = -1) -> None:
    """A request about `tp` failed retriably: mark its topic stale; NOT_LEADER's hint (from the
    error, or a per-partition result's `leader_id`) is applied at once."""
    hint_id = error.leader_id if isinstance(error, errors.NotLeader) else -1
    hint_id = hint_id if hint_id >= 0 else leader_id
    address = error.leader_address if isinstance(error, errors.NotLeader) else ""
    if hint_id >= 0 and not address:
        address = metadata.node_address(hint_id) or ""
    metadata.mark_stale(tp.topic, partition=tp.partition, leader_id=hint_id,
                        leader_address=address)


def result_error(metadata: Metadata, tp: TopicPartition, result: Any) -> errors.TidelogError:
    """A per-partition result's error code (ListOffsets, Fetch): a non-retriable one is raised;
    a retriable one marks the metadata (note_failure, with the result's leader hint) and is
    returned, for the caller's "last error"."""
    error = errors.from_code(result.error, result.error_message, subject=str(tp),
                             leader_id=result.leader_id)
    if not error.retriable:
        raise error
    note_failure(metadata, tp, error, leader_id=result.leader_id)
    return error


def call_partition_leader(
    metadata: Metadata, connections: Connections, tp: TopicPartition, method: str,
    request: object, *, timeout_s: float, backoff_s: float,
) -> Any:
    """`method` on the leader of `tp`, following leadership changes until `timeout_s`."""

    def attempt(left_s: float) -> Any:
        leader = metadata.leader_address(tp.topic, tp.partition)
        if leader is None:
            metadata.refresh([tp.topic], timeout_s=left_s)
            leader = metadata.leader_address(tp.topic, tp.partition)
        if leader is None:
            raise errors.LeaderNotAvailable(f"{tp}: no leader known")
        return connections.call(leader, method, request, timeout_s=left_s, subject=str(tp))

    return retrying(attempt, what=f"{method} to the leader of {tp}", timeout_s=timeout_s,
                    backoff_s=backoff_s, on_retriable=lambda error: note_failure(
                        metadata, tp, error))


def call_metadata_leader(
    metadata: Metadata, connections: Connections, method: str, request: object, *,
    timeout_s: float, backoff_s: float,
) -> Any:
    """`method` on any node; a NOT_LEADER answer's hint (the metadata leader) is asked next.
    Never hedged: these requests change the cluster and must reach it once per attempt."""
    hint: list[str] = []

    def attempt(left_s: float) -> Any:
        if hint:
            return connections.call(hint[0], method, request, timeout_s=left_s)
        return metadata.call_any(method, request, timeout_s=left_s)

    def on_retriable(error: errors.TidelogError) -> None:
        hint.clear()
        if isinstance(error, errors.NotLeader) and error.leader_address:
            hint.append(error.leader_address)

    return retrying(attempt, what=method, timeout_s=timeout_s, backoff_s=backoff_s,
                    on_retriable=on_retriable)


def call_first_answering(
    connections: Connections, stub_of: Callable[[Any], Any], method: str, request: object, *,
    candidates: Callable[[], list[str]], subject: str, timeout_s: float, backoff_s: float,
) -> Any:
    """`method` of the stub `stub_of(channel)` on the first of `candidates()` (asked again each
    round) that answers; a non-retriable failure is raised at once, retriable ones are tried on
    the next candidate, then the round again after `backoff_s`, until `timeout_s` (then Timeout
    with every candidate's last failure). For services beside Broker, whose changes any node
    takes (it forwards them to the metadata leader)."""
    import grpc

    deadline = time.monotonic() + timeout_s
    while True:
        failures: list[str] = []
        for candidate in candidates():
            stub = stub_of(connections.channel(candidate))
            try:
                return getattr(stub, method)(request,
                                             timeout=max(0.1, deadline - time.monotonic()))
            except grpc.RpcError as exc:
                error = errors.from_rpc_error(exc, subject=subject, address=candidate)
                if not error.retriable:
                    raise error from None
                failures.append(f"{candidate}: {error}")
        if time.monotonic() >= deadline:
            raise errors.Timeout(f"{method} did not succeed within {timeout_s:.1f} s: "
                                 + "; ".join(failures))
        time.sleep(backoff_s)
