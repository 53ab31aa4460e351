"""Classic Raft bugs, injected by subclassing the real core (never by a flag in the core)."""

from __future__ import annotations

import dataclasses

from tidelog.node.raft import LogIndex, Message, RaftCore, Ready
from tidelog.node.raft.quorum import committed_index


class ForgetsVote(RaftCore):
    """Replies to a vote request without persisting the vote (hard state written without it)."""

    _real_hs = None

    def ready(self) -> Ready | None:
        rd = super().ready()
        if rd is not None and rd.hard_state is not None and rd.hard_state.vote is not None:
            self._real_hs = rd.hard_state
            rd = dataclasses.replace(rd, hard_state=dataclasses.replace(rd.hard_state, vote=None))
            self._outstanding = rd
        return rd

    def advance(self, rd: Ready) -> None:
        super().advance(rd)
        if self._real_hs is not None:
            self._prev_hs, self._real_hs = self._real_hs, None


class VotesForStaleLogs(RaftCore):
    """Grants votes without the §5.4.1 election restriction (candidate log up to date)."""

    def _handle_vote_request(self, m: Message) -> None:
        self.log.is_up_to_date = lambda _index, _term: True  # type: ignore[method-assign]
        try:
            super()._handle_vote_request(m)
        finally:
            del self.log.is_up_to_date


class CommitsOldTerms(RaftCore):
    """Figure 8: commits any entry a majority holds, whatever its term."""

    def _maybe_commit(self) -> bool:
        match = {p: pr.match for p, pr in self.progress.items()}
        match[self.id] = self.log.persisted_index()
        q = committed_index(self.membership.voters, match)
        if q > self.commit and self.log.term_at(LogIndex(q)) is not None:
            self._commit_to(q)
            return True
        return False


class AcksDiscardedEntries(RaftCore):
    """Sends an acknowledgement queued before a truncation or log-start reset removed the entries
    it covers (the promise of durability is then false)."""

    def _retract_acks_after(self, cut: LogIndex) -> None:
        pass
