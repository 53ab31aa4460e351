"""Transcript tests (etcd-io/raft's testdata/*.txt manner): scripted scenarios over real cores,
compared with golden output in tests/raft/transcripts/.

When behaviour changes on purpose, regenerate the goldens and review the diff like code::

    pytest tests/raft/test_transcripts.py --regen-transcripts
    TIDELOG_REGEN_TRANSCRIPTS=1 pytest tests/raft/test_transcripts.py

The script language is described in tests/raft/transcript.py.
"""

from __future__ import annotations

import difflib
import os
import shutil
from pathlib import Path

import pytest
from tidelog.node.raft import LogIndex, RaftCore

from tests.raft.bugs import CommitsOldTerms, VotesForStaleLogs
from tests.raft.transcript import parse, render, run_file

DIR = Path(__file__).parent / "transcripts"
SCRIPTS = sorted(DIR.glob("*.txt"))


def _regen(config: pytest.Config) -> bool:
    flag = bool(config.getoption("--regen-transcripts", default=False))
    return flag or os.environ.get("TIDELOG_REGEN_TRANSCRIPTS") == "1"


def check_transcript(path: Path, *, regen: bool, core_cls: type[RaftCore] = RaftCore) -> None:
    """Run ``path``; rewrite it when ``regen``, else fail with a diff on any difference."""
    blocks, outputs = run_file(path, core_cls)
    if regen:
        path.write_text(render(blocks, outputs))
        return
    diffs = [
        f"{path.name}:{b.line}: {b.command}\n"
        + "\n".join(difflib.unified_diff(b.expected.splitlines(), out.splitlines(), lineterm=""))
        for b, out in zip(blocks, outputs, strict=True)
        if out != b.expected
    ]
    assert not diffs, (
        "transcript differs from its golden output (regenerate with --regen-transcripts if the "
        "change is intended):\n\n" + "\n\n".join(diffs)
    )


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.stem)
def test_transcript_matches_golden(path: Path, request: pytest.FixtureRequest) -> None:
    check_transcript(path, regen=_regen(request.config))


def test_transcripts_cover_the_required_scenarios() -> None:
    names = {p.stem for p in SCRIPTS}
    required = {
        "election_replication",
        "prevote_checkquorum",
        "leader_transfer",
        "membership_learner",
        "log_start_install",
        "log_start_install_dropped",
        "log_start_install_membership",
        "figure8",
        "conflict_truncation",
        "vote_restriction",
    }
    assert required <= names, f"missing transcripts: {sorted(required - names)}"


def test_altered_golden_fails(tmp_path: Path) -> None:
    """The comparison can fail: one changed character in a golden output is reported."""
    src = DIR / "election_replication.txt"
    copy = tmp_path / src.name
    shutil.copy(src, copy)
    text = copy.read_text()
    assert "commit=" in text
    copy.write_text(text.replace("commit=", "commit=9", 1))
    with pytest.raises(AssertionError, match="differs from its golden"):
        check_transcript(copy, regen=False)


def test_regen_rewrites_a_stale_golden(tmp_path: Path) -> None:
    """--regen-transcripts rewrites the outputs and keeps commands and comments."""
    src = DIR / "election_replication.txt"
    copy = tmp_path / src.name
    copy.write_text(src.read_text().replace("commit=", "commit=9", 1))
    check_transcript(copy, regen=True)
    assert copy.read_text() == src.read_text()
    assert len(parse(copy.read_text())) == len(parse(src.read_text())) > 5


def test_figure8_transcript_catches_commits_old_terms() -> None:
    """The planted Figure-8 bug (tests/raft/bugs.py) changes the figure8 transcript, without any
    help from the simulator: the buggy leader tries to commit offset 1 (term 1) when 1, 2, 3 and 4
    hold it, and the core's own-term commit invariant stops it (the transcript prints the
    AssertionError where the golden output shows commit=0)."""
    path = DIR / "figure8.txt"
    blocks, good = run_file(path)
    assert all(b.expected == out for b, out in zip(blocks, good, strict=True))
    assert not any("!!" in out for out in good)
    _, bad = run_file(path, CommitsOldTerms)
    assert bad != good
    caught = [ln for out in bad for ln in out.splitlines() if ln.startswith("!! AssertionError")]
    assert caught and "an entry of an older term" in caught[0], "CommitsOldTerms went unnoticed"


def test_figure8_without_the_commit_invariant_loses_a_committed_entry() -> None:
    """What the invariant prevents: a core that commits old-term entries AND lacks the check
    (both removed here) applies offset 1 (term 1) on node 1, then node 5 is elected and offset 1
    (term 2) is applied elsewhere: State Machine Safety broken ("!! SAFETY")."""
    _, bad = run_file(DIR / "figure8.txt", _CommitsOldTermsUnchecked)
    assert any("!! SAFETY" in out for out in bad)


class _CommitsOldTermsUnchecked(CommitsOldTerms):
    def _check_commit(self, index: LogIndex) -> None:
        pass


def test_vote_restriction_transcript_catches_votes_for_stale_logs() -> None:
    """The planted VotesForStaleLogs (no §5.4.1 election restriction) elects node 3 without the
    committed entry; it overwrites it and the vote_restriction transcript prints "!! SAFETY"."""
    path = DIR / "vote_restriction.txt"
    _, good = run_file(path)
    assert not any("!! SAFETY" in out for out in good)
    _, bad = run_file(path, VotesForStaleLogs)
    assert any("!! SAFETY" in out for out in bad), "VotesForStaleLogs went unnoticed"
