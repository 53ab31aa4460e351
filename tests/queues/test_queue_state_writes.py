"""Group commit's grouping (node/queues/state_writes.py), sans-I/O: what one flush writes."""

from __future__ import annotations

from tidelog.node.queues.state_writes import PendingWrites


class Q:
    """Stands for a coordinator's queue: only its identity matters to the grouping."""


def test_one_group_per_queue_with_its_deltas_in_the_order_made() -> None:
    a, b = Q(), Q()
    pending = PendingWrites()
    pending.add(a, ["a1"])
    pending.add(b, ["b1", "b2"])
    pending.add(a, ["a2"], snapshot=True)
    pending.add(a, [])
    groups = pending.take()
    assert [(g.queue, g.deltas, g.snapshot, g.last_of_queue) for g in groups] == [
        (a, ["a1", "a2"], True, True), (b, ["b1", "b2"], False, True)]
    assert not pending and pending.take() == []


def test_raw_records_keep_their_place_and_split_a_queue_that_writes_after_them() -> None:
    a, b = Q(), Q()
    pending = PendingWrites()
    pending.add(a, ["a1"])
    pending.add_records([(b"Q\x00b\x00S", None)])
    pending.add(a, ["a2"])
    pending.add(b, ["b1"])
    groups = pending.take()
    assert [(g.queue, g.deltas, list(g.records)) for g in groups] == [
        (a, ["a1"], []), (None, [], [(b"Q\x00b\x00S", None)]), (a, ["a2"], []),
        (b, ["b1"], [])]
    # Only a queue's last group may be written as a snapshot: one taken at an earlier group
    # would already hold the later group's changes, which are then applied again on replay.
    assert [g.last_of_queue for g in groups if g.queue is a] == [False, True]
