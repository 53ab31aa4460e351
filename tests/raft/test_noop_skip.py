"""The leader's no-op is skipped when the whole log is already committed (issue 15).

Partition replicas run with ``noop_on_committed_log=False``: a new leader appends its NOOP only
when an entry of an older term may still need committing (§5.4.2: it cannot commit those by
counting). So a fresh topic's first record is at offset 0, and an idle leader change adds no
offset; the paper's behaviour (a NOOP every term) stays the core's default, see test_paper.py.
"""

from __future__ import annotations

import pytest
from tidelog.node.raft import ConfigChangeRejected, EntryKind, NodeId, Role

from tests.raft.harness import Harness


def _skipping(n: int = 3) -> Harness:
    return Harness(n, noop_on_committed_log=False)


def test_leader_of_an_empty_log_appends_no_noop_and_the_first_record_is_at_zero() -> None:
    """§5.4.2: nothing of an older term to commit, so no NOOP; the first proposal, of the
    current term, commits by counting."""
    h = _skipping()
    lead = h.elect(1)
    assert h.entries(1) == []
    assert all(h.cores[NodeId(i)].leader == 1 for i in (2, 3))  # the empty appends announced it
    assert lead.propose(b"first", 3) == 0
    h.deliver()
    assert lead.commit == 2
    assert all(h.entries(i) == [(0, 2, 1)] for i in (1, 2, 3))


def test_leader_with_entries_not_known_committed_still_appends_its_noop() -> None:
    """§5.4.2 / Figure 8: entries of an older term that the new leader does not know committed
    are committed only through an entry of its own term: the NOOP is written."""
    h = _skipping()
    lead = h.elect(1)
    h.cut |= {(2, 1), (3, 1)}  # the followers get the entry; the leader never hears back
    lead.propose(b"x", 2)
    h.deliver()
    assert lead.commit < 1 and h.cores[NodeId(2)].commit < 1
    h.heal()
    h.down.add(NodeId(1))
    for _ in range(100):  # until the followers' lease on node 1 runs out and one of them leads
        h.tick_all()
        leaders = [h.cores[NodeId(i)] for i in (2, 3) if h.cores[NodeId(i)].role == Role.LEADER]
        if leaders:
            break
    (second,) = leaders
    last = h.logs[second.id].all_entries()[-1]
    assert last.kind == EntryKind.NOOP and last.term == second.term
    assert second.commit == last.last  # the older entry committed with it


def test_idle_leadership_transfer_adds_no_offset() -> None:
    """A hand-over of an idle partition (every entry known committed on the target) writes
    nothing: a restart or a rebalance no longer moves the log end."""
    h = _skipping()
    lead = h.elect(1)
    lead.propose(b"x", 4)
    h.deliver()
    h.tick_all(2)  # heartbeats carry the commit index to the followers
    before = h.entries(1)
    lead.transfer_leadership(NodeId(2))
    h.deliver()
    h.tick_all(3)
    assert h.cores[NodeId(2)].role == Role.LEADER
    assert h.entries(2) == before and h.entries(1) == before


def test_membership_change_after_a_skipped_noop_writes_it_then_succeeds() -> None:
    """Ongaro's single-server-change rule still holds: no change before an entry of this term
    commits; the refused call appends the NOOP itself, so the retry succeeds without a client
    write."""
    h = _skipping()
    lead = h.elect(1)
    with pytest.raises(ConfigChangeRejected, match="not committed an entry of its term"):
        lead.add_learner(NodeId(4))
    h.deliver()
    (noop,) = h.logs[NodeId(1)].all_entries()
    assert noop.kind == EntryKind.NOOP and lead.commit == noop.last
    index = lead.add_learner(NodeId(4))
    assert index == noop.last + 1
