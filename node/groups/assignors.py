"""Server-side partition assignors: pure functions from (members, subscriptions, partitions,
current assignment) to a target assignment.

Every assignor guarantees, for any input: each partition of a subscribed topic goes to exactly one
member subscribed to that topic, and nothing else is assigned. They differ in what else they try:

* ``uniform`` (round-robin): all partitions of all topics, sorted, dealt out in turn to the sorted
  members subscribed to each topic. Even counts; ignores the current assignment.
* ``range``: per topic, the sorted subscribed members get contiguous ranges of partitions
  (Kafka's RangeAssignor), so partition p of topics with equal counts lands on the same member.
* ``sticky`` (the default): keep every partition where it is when that is still valid, give the
  unowned ones to the least-loaded subscribed member, then move single partitions from the most
  to the least loaded member while their counts differ by more than one. With identical
  subscriptions the counts end within one of each other and the number of moved partitions is the
  minimum that achieves it (a joining member takes exactly its share, one from each over-quota
  member; a leaving member's partitions are the only ones that move).

Deterministic: ties break by member id, then partition, so every coordinator computes the same
target from the same input.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import Enum

__all__ = ["ASSIGNORS", "Assignor", "TopicPartition", "assign", "movement"]

MEMBERS_MAX = 1000
PARTITIONS_MAX = 100_000


@dataclass(frozen=True, slots=True, order=True)
class TopicPartition:
    topic: str
    partition: int


class Assignor(Enum):
    UNIFORM = "uniform"
    RANGE = "range"
    STICKY = "sticky"


Assignment = dict[str, set[TopicPartition]]


def assign(
    assignor: Assignor,
    subscriptions: Mapping[str, Iterable[str]],
    partition_counts: Mapping[str, int],
    current: Mapping[str, Iterable[TopicPartition]] | None = None,
) -> Assignment:
    """The target assignment: member id → partitions. `subscriptions`: member id → topic names
    (topics missing from `partition_counts` are ignored: they do not exist, or not yet)."""
    subs = {m: frozenset(t for t in topics if partition_counts.get(t, 0) > 0)
            for m, topics in subscriptions.items()}
    assert len(subs) <= MEMBERS_MAX, f"{len(subs)} members, at most {MEMBERS_MAX}"
    assert sum(partition_counts.values()) <= PARTITIONS_MAX
    result = ASSIGNORS[assignor](subs, partition_counts, current or {})
    _check(result, subs, partition_counts)
    return result


def movement(before: Mapping[str, Iterable[TopicPartition]],
             after: Mapping[str, Iterable[TopicPartition]]) -> int:
    """How many partitions changed owner (a partition newly owned by someone counts too)."""
    owner_before = {tp: m for m, tps in before.items() for tp in tps}
    return sum(1 for m, tps in after.items() for tp in tps if owner_before.get(tp) != m)


# ---------------------------------------------------------------------------------- assignors


def _uniform(subs: Mapping[str, frozenset[str]], counts: Mapping[str, int],
             current: Mapping[str, Iterable[TopicPartition]]) -> Assignment:
    out: Assignment = {m: set() for m in subs}
    members = sorted(subs)
    turn = 0
    for tp in _all_partitions(subs, counts):
        # the next member in turn that is subscribed to the topic
        for step in range(len(members)):
            member = members[(turn + step) % len(members)]
            if tp.topic in subs[member]:
                out[member].add(tp)
                turn = (turn + step + 1) % len(members)
                break
    return out


def _range(subs: Mapping[str, frozenset[str]], counts: Mapping[str, int],
           current: Mapping[str, Iterable[TopicPartition]]) -> Assignment:
    out: Assignment = {m: set() for m in subs}
    for topic in sorted({t for topics in subs.values() for t in topics}):
        members = sorted(m for m, topics in subs.items() if topic in topics)
        count = counts[topic]
        share, extra = divmod(count, len(members))
        start = 0
        for i, member in enumerate(members):
            size = share + (1 if i < extra else 0)
            out[member].update(TopicPartition(topic, p) for p in range(start, start + size))
            start += size
    return out


def _sticky(subs: Mapping[str, frozenset[str]], counts: Mapping[str, int],
            current: Mapping[str, Iterable[TopicPartition]]) -> Assignment:
    out: Assignment = {m: set() for m in subs}
    claimed: set[TopicPartition] = set()
    # 1. Keep what is still valid (member still here and subscribed, partition still exists).
    for member in sorted(current):
        if member not in subs:
            continue
        for tp in sorted(current[member]):
            if (tp.topic in subs[member] and 0 <= tp.partition < counts.get(tp.topic, 0)
                    and tp not in claimed):
                out[member].add(tp)
                claimed.add(tp)
    # 2. Unowned partitions go to the least-loaded subscribed member.
    for tp in _all_partitions(subs, counts):
        if tp in claimed:
            continue
        candidates = [m for m in subs if tp.topic in subs[m]]
        member = min(candidates, key=lambda m: (len(out[m]), m))
        out[member].add(tp)
        claimed.add(tp)
    # 3. Move one partition at a time from the most to a least loaded member that can take it.
    # Each move lowers the sum of squared counts, so this ends; bounded by the partition count.
    for _ in range(len(claimed) + 1):
        if not _move_one(out, subs):
            break
    return out


def _move_one(out: Assignment, subs: Mapping[str, frozenset[str]]) -> bool:
    for giver in sorted(out, key=lambda m: (-len(out[m]), m)):
        for taker in sorted(out, key=lambda m: (len(out[m]), m)):
            if len(out[giver]) - len(out[taker]) <= 1:
                break
            movable = sorted(tp for tp in out[giver] if tp.topic in subs[taker])
            if movable:
                tp = movable[-1]
                out[giver].remove(tp)
                out[taker].add(tp)
                return True
    return False


ASSIGNORS: dict[Assignor, Callable[..., Assignment]] = {
    Assignor.UNIFORM: _uniform,
    Assignor.RANGE: _range,
    Assignor.STICKY: _sticky,
}


# ------------------------------------------------------------------------------------ helpers


def _all_partitions(subs: Mapping[str, frozenset[str]],
                    counts: Mapping[str, int]) -> list[TopicPartition]:
    topics = sorted({t for topics in subs.values() for t in topics})
    return [TopicPartition(t, p) for t in topics for p in range(counts[t])]


def _check(result: Assignment, subs: Mapping[str, frozenset[str]],
           counts: Mapping[str, int]) -> None:
    """The contract every assignor keeps (asserts always run: a broken assignor is our bug)."""
    seen: set[TopicPartition] = set()
    for member, tps in result.items():
        for tp in tps:
            assert tp not in seen, f"{tp} assigned twice"
            assert tp.topic in subs[member], f"{tp} given to {member}, not subscribed"
            seen.add(tp)
    assert seen == set(_all_partitions(subs, counts)), "some subscribed partition unassigned"
