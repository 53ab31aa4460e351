"""Transcript scripts for the Raft core, in the manner of etcd-io/raft's ``testdata/*.txt``.

A script is a sequence of blocks (the ``datadriven`` layout etcd uses)::

    # comments explain the scenario
    command arg key=value
    ----
    the output the command printed (no blank lines; "ok" when there is nothing to say)

Each command drives real ``RaftCore`` instances over ``MemoryLog``; the interpreter plays the
runtime exactly as the Ready contract says (persist hard state + membership, reset, truncate,
append, then queue the messages, then ``advance``). Output is deterministic: each node's
``random.Random`` is seeded with its id, and messages are delivered in the order they were sent.

Commands (N, M are node ids; ``xK`` repeats K times):

===============================================  =================================================
``add-nodes K [voters=(1,2,3)] [learners=(4)]``  K new nodes (bootstrap membership: voters default
``  [pre-vote=B] [check-quorum=B] [election=T]``  to the new ids); config options as in RaftConfig
``  [heartbeat=T] [inflight=K] [append-bytes=K]``
``  [promote-lag=K]``
``campaign N``                                    tick N until it (again) campaigns (its timeout)
``tick N [xK]`` / ``tick all [xK]``               logical time for one node or every live node
``run xK [show=type,type] [quiet]``               K rounds of: tick every live node, stabilize;
                                                  prints only messages of the listed types
``process-ready [N ...]``                         handle each node's Ready (all nodes by default)
``deliver-msgs [to=N] [from=M] [type=T]``         step the queued messages that match
``drop-msgs [to=N] [from=M] [type=T]``            lose the queued messages that match
``stabilize [N ...] [quiet]``                     process-ready + deliver until nothing is left
``drop N->M [type]`` / ``isolate N`` / ``heal``   standing network rules
``propose N data [count=K]``                      a DATA batch of K records
``add-learner N M`` / ``promote N M`` /           membership changes proposed at N
``remove N M``
``transfer-leadership N to=M``                    leadership transfer
``report-unreachable N M``                        the transport failed to deliver N's msg to M
``compact N upto=I``                              retention: N's log drops entries up to I
``stop N`` / ``restart N``                        crash (queued messages to/from N are lost) /
                                                  a new core from what N persisted
``status [N ...]`` / ``log N``                    role, term, commit, progress / the durable log
===============================================  =================================================

A safety check runs under every command: when two nodes apply different entries at the same
offset, the output says ``!! SAFETY`` (so a planted bug changes the transcript even where the
scenario does not look at that node).
"""

from __future__ import annotations

import random
import re
import shlex
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import assert_never

from tidelog.node.raft import (
    Entry,
    EntryKind,
    HardState,
    LogIndex,
    Membership,
    MemoryLog,
    Message,
    MessageType,
    NodeId,
    ProgressState,
    RaftConfig,
    RaftCore,
    RaftError,
    Ready,
    Role,
)

STABILIZE_ROUNDS_MAX = 1000


# ------------------------------------------------------------------------------ file format


@dataclass(frozen=True, slots=True, kw_only=True)
class Block:
    """One command and its expected output; ``preamble`` holds the comment and blank lines."""

    preamble: tuple[str, ...]
    command: str
    expected: str
    line: int


def parse(text: str) -> list[Block]:
    lines = text.splitlines()
    blocks: list[Block] = []
    pre: list[str] = []
    i = 0
    while i < len(lines):
        ln = lines[i]
        if not ln.strip() or ln.startswith("#"):
            pre.append(ln)
            i += 1
            continue
        cmd_line = i + 1
        if i + 1 >= len(lines) or lines[i + 1] != "----":
            raise ValueError(f"line {cmd_line}: command {ln!r} is not followed by '----'")
        i += 2
        out: list[str] = []
        while i < len(lines) and lines[i].strip():
            out.append(lines[i])
            i += 1
        expected = "\n".join(out)
        blocks.append(Block(preamble=tuple(pre), command=ln, expected=expected, line=cmd_line))
        pre = []
    if any(p.strip() for p in pre):
        raise ValueError("trailing comment after the last command")
    return blocks


def render(blocks: Iterable[Block], outputs: Iterable[str]) -> str:
    """The script with ``outputs`` as its golden output; blocks separated by one blank line."""
    parts: list[str] = []
    for b, out in zip(blocks, outputs, strict=True):
        pre = list(b.preamble)
        while pre and not pre[0].strip():
            pre.pop(0)
        while pre and not pre[-1].strip():
            pre.pop()
        if parts:
            parts.append("")
        parts.extend([*pre, b.command, "----", out])
    return "\n".join(parts) + "\n"


def run_file(path: Path, core_cls: type[RaftCore] = RaftCore) -> tuple[list[Block], list[str]]:
    """Run every block of a script; returns the blocks and the outputs actually printed."""
    blocks = parse(path.read_text())
    t = Transcript(core_cls=core_cls)
    return blocks, [t.run(b.command) for b in blocks]


# ------------------------------------------------------------------------------ formatting


def fmt_ids(ids: Iterable[int]) -> str:
    return "(" + ",".join(str(i) for i in sorted(ids)) + ")"


def fmt_membership(m: Membership) -> str:
    return f"voters={fmt_ids(m.voters)} learners={fmt_ids(m.learners)} index={m.index}"


def fmt_entry(e: Entry) -> str:
    pos = f"{e.index}" if e.count == 1 else f"{e.index}..{e.last}"
    match e.kind:
        case EntryKind.DATA:
            return f"{pos}/t{e.term} {e.data.decode(errors='replace')!r}"
        case EntryKind.NOOP:
            return f"{pos}/t{e.term} NOOP"
        case EntryKind.CONFIG:
            return f"{pos}/t{e.term} CONFIG {fmt_membership(Membership.decode(e.data))}"
        case _:
            assert_never(e.kind)


def fmt_msg(m: Message) -> str:
    head = f"{m.frm}->{m.to} {m.type.name} term={m.term}"
    match m.type:
        case MessageType.PRE_VOTE | MessageType.VOTE:
            tail = f"last={m.index}/t{m.log_term}" + (" transfer" if m.transfer else "")
        case MessageType.PRE_VOTE_RESP | MessageType.VOTE_RESP:
            tail = "reject" if m.reject else "grant"
        case MessageType.APPEND:
            ents = ", ".join(fmt_entry(e) for e in m.entries)
            tail = f"prev={m.index}/t{m.log_term} commit={m.commit} [{ents}]"
        case MessageType.APPEND_RESP:
            tail = (
                f"reject index={m.index} hint={m.reject_hint}/t{m.log_term}"
                if m.reject
                else f"index={m.index}"
            )
        case MessageType.HEARTBEAT:
            tail = f"commit={m.commit}"
        case MessageType.INSTALL_LOG_START:
            mem = fmt_membership(m.membership) if m.membership else "-"
            tail = f"start-prev={m.index}/t{m.log_term} commit={m.commit} {mem}"
        case MessageType.HEARTBEAT_RESP | MessageType.TIMEOUT_NOW:
            tail = ""
        case _:
            assert_never(m.type)
    return f"{head} {tail}".rstrip()


def fmt_ready(rd: Ready, *, commit_changed: bool) -> list[str]:
    out: list[str] = []
    if rd.soft_state is not None:
        s = rd.soft_state
        out.append(f"SoftState role={s.role.value} leader={s.leader} term={s.term}")
    if rd.hard_state is not None:
        h = rd.hard_state
        out.append(f"HardState term={h.term} vote={h.vote} commit={h.commit}")
    if rd.membership is not None:
        out.append(f"Membership {fmt_membership(rd.membership)}")
    if rd.reset_log_to is not None:
        out.append(f"ResetLog start={rd.reset_log_to.start} term={rd.reset_log_to.term}")
    if rd.truncate_after is not None:
        out.append(f"TruncateAfter {rd.truncate_after}")
    if rd.entries:
        out.append("Entries:")
        out.extend(f"  {fmt_entry(e)}" for e in rd.entries)
    if rd.messages:
        out.append("Messages:")
        out.extend(f"  {fmt_msg(m)}" for m in rd.messages)
    if commit_changed:
        out.append(f"CommitIndex {rd.commit_index}")
    if rd.committed_entries:
        out.append("Apply:")
        out.extend(f"  {fmt_entry(e)}" for e in rd.committed_entries)
    if rd.recovered:
        out.append("Recovered")
    return out


# ------------------------------------------------------------------------------ the runtime


@dataclass(slots=True)
class Node:
    """One replica: its durable state (what survives ``stop``) and its running core."""

    id: NodeId
    config: RaftConfig
    log: MemoryLog
    hard_state: HardState
    membership: Membership
    core: RaftCore | None = None
    shown_commit: LogIndex = LogIndex(-1)


@dataclass(frozen=True, slots=True)
class Rule:
    frm: NodeId | None
    to: NodeId | None
    type: MessageType | None

    def matches(self, m: Message) -> bool:
        return (
            (self.frm is None or m.frm == self.frm)
            and (self.to is None or m.to == self.to)
            and (self.type is None or m.type == self.type)
        )


@dataclass(slots=True)
class Transcript:
    core_cls: type[RaftCore] = RaftCore
    nodes: dict[NodeId, Node] = field(default_factory=dict)
    mailbox: list[Message] = field(default_factory=list)
    rules: list[Rule] = field(default_factory=list)
    applied: dict[LogIndex, tuple[NodeId, Entry]] = field(default_factory=dict)
    _out: list[str] = field(default_factory=list)
    _show: frozenset[MessageType] | None = None  # `run show=...`: print only these messages

    def run(self, command: str) -> str:
        """Execute one command line; returns what it printed ("ok" if nothing)."""
        self._out = []
        words = shlex.split(command)
        name, args = words[0], words[1:]
        pos = [a for a in args if "=" not in a]
        kw = dict(a.split("=", 1) for a in args if "=" in a)
        handler: Callable[[list[str], dict[str, str]], None] | None = getattr(
            self, "cmd_" + name.replace("-", "_"), None
        )
        if handler is None:
            raise ValueError(f"unknown command {name!r}")
        try:
            handler(pos, kw)
        except (RaftError, ValueError) as e:
            self._print(f"{type(e).__name__}: {e}")
        return "\n".join(self._out) if self._out else "ok"

    # --- commands: cluster

    def cmd_add_nodes(self, pos: list[str], kw: dict[str, str]) -> None:
        first = max(self.nodes, default=0) + 1
        new = [NodeId(first + k) for k in range(int(pos[0]))]
        voters = _ids(kw["voters"]) if "voters" in kw else tuple(new)
        learners = _ids(kw.get("learners", "()"))
        for i in new:
            cfg = RaftConfig(
                node_id=i,
                voters=voters,
                learners=learners,
                pre_vote=_bool(kw.get("pre-vote", "true")),
                check_quorum=_bool(kw.get("check-quorum", "true")),
                election_ticks=int(kw.get("election", "10")),
                heartbeat_ticks=int(kw.get("heartbeat", "1")),
                max_inflight_msgs=int(kw.get("inflight", "256")),
                max_append_bytes=int(kw.get("append-bytes", str(1 << 20))),
                promote_lag_max=int(kw.get("promote-lag", "0")),
            )
            n = Node(i, cfg, MemoryLog(), HardState(), cfg.membership)
            self.nodes[i] = n
            self._start(n)
        self._print(f"added {' '.join(map(str, new))}: {fmt_membership(cfg.membership)}")

    def cmd_stop(self, pos: list[str], kw: dict[str, str]) -> None:
        n = self._node(pos[0])
        n.core = None
        lost = [m for m in self.mailbox if n.id in (m.frm, m.to)]
        self.mailbox = [m for m in self.mailbox if n.id not in (m.frm, m.to)]
        self._print(f"stopped {n.id}; {len(lost)} queued messages lost")

    def cmd_restart(self, pos: list[str], kw: dict[str, str]) -> None:
        n = self._node(pos[0])
        self._start(n)
        self._status(n)

    # --- commands: time, Readies and the network

    def cmd_campaign(self, pos: list[str], kw: dict[str, str]) -> None:
        core = self._core(pos[0])
        if core.role not in (Role.FOLLOWER, Role.CANDIDATE):
            raise ValueError(f"{core.id} is {core.role.value}, not a follower or candidate")
        role, term = core.role, core.term
        for ticks in range(1, 4 * core.config.election_ticks):
            core.tick()
            if core.role != role or core.term != term:
                self._print(
                    f"{core.id} campaigns after {ticks} ticks: {core.role.value} term={core.term}"
                )
                return
        self._print(f"{core.id} did not campaign")

    def cmd_tick(self, pos: list[str], kw: dict[str, str]) -> None:
        times = _times(pos)
        targets = self._live() if pos[0] == "all" else [self._core(pos[0])]
        for _ in range(times):
            for core in targets:
                core.tick()

    def cmd_run(self, pos: list[str], kw: dict[str, str]) -> None:
        shown = kw.get("show")
        self._show = frozenset(MessageType(t) for t in shown.split(",")) if shown else None
        try:
            for r in range(_times(pos)):
                for core in self._live():
                    core.tick()
                mark = len(self._out)
                self._stabilize(list(self.nodes))
                if len(self._out) > mark:
                    self._out.insert(mark, f"round {r + 1}:")
        finally:
            self._show = None
        if "quiet" in pos:
            self._out.clear()

    def cmd_process_ready(self, pos: list[str], kw: dict[str, str]) -> None:
        for i in self._targets(pos):
            self._process(self.nodes[i], header=len(pos) != 1)

    def cmd_deliver_msgs(self, pos: list[str], kw: dict[str, str]) -> None:
        self._deliver(_rule(kw))

    def cmd_drop_msgs(self, pos: list[str], kw: dict[str, str]) -> None:
        rule = _rule(kw)
        for m in [m for m in self.mailbox if rule.matches(m)]:
            self._print(f"dropped: {fmt_msg(m)}")
        self.mailbox = [m for m in self.mailbox if not rule.matches(m)]

    def cmd_stabilize(self, pos: list[str], kw: dict[str, str]) -> None:
        quiet = "quiet" in pos
        mark = len(self._out)
        self._stabilize(self._targets([p for p in pos if p != "quiet"]))
        if quiet:
            del self._out[mark:]

    def cmd_drop(self, pos: list[str], kw: dict[str, str]) -> None:
        m = re.fullmatch(r"(\d+|\*)->(\d+|\*)", pos[0])
        if m is None:
            raise ValueError(f"expected N->M, got {pos[0]!r}")
        frm, to = (None if g == "*" else NodeId(int(g)) for g in m.groups())
        self.rules.append(Rule(frm, to, MessageType(pos[1]) if len(pos) > 1 else None))

    def cmd_isolate(self, pos: list[str], kw: dict[str, str]) -> None:
        i = NodeId(int(pos[0]))
        self.rules += [Rule(i, None, None), Rule(None, i, None)]

    def cmd_heal(self, pos: list[str], kw: dict[str, str]) -> None:
        self.rules.clear()

    # --- commands: client and operator requests

    def cmd_propose(self, pos: list[str], kw: dict[str, str]) -> None:
        core = self._core(pos[0])
        idx = core.propose(pos[1].encode(), int(kw.get("count", "1")))
        self._print(f"{core.id} proposed at {idx}")

    def cmd_add_learner(self, pos: list[str], kw: dict[str, str]) -> None:
        self._print(f"CONFIG at {self._core(pos[0]).add_learner(NodeId(int(pos[1])))}")

    def cmd_promote(self, pos: list[str], kw: dict[str, str]) -> None:
        self._print(f"CONFIG at {self._core(pos[0]).promote(NodeId(int(pos[1])))}")

    def cmd_remove(self, pos: list[str], kw: dict[str, str]) -> None:
        self._print(f"CONFIG at {self._core(pos[0]).remove(NodeId(int(pos[1])))}")

    def cmd_transfer_leadership(self, pos: list[str], kw: dict[str, str]) -> None:
        self._core(pos[0]).transfer_leadership(NodeId(int(kw["to"])))

    def cmd_report_unreachable(self, pos: list[str], kw: dict[str, str]) -> None:
        self._core(pos[0]).report_unreachable(NodeId(int(pos[1])))

    def cmd_compact(self, pos: list[str], kw: dict[str, str]) -> None:
        n = self._node(pos[0])
        upto = LogIndex(int(kw["upto"]))
        core = n.core
        if core is not None and upto > min(core.applied, core.log.persisted_index()):
            raise ValueError(f"retention may cut only up to min(applied, persisted) on {n.id}")
        n.log.truncate_prefix(upto)
        self._print(f"{n.id} log starts at {n.log.log_start()}")

    # --- commands: observers

    def cmd_status(self, pos: list[str], kw: dict[str, str]) -> None:
        for i in self._targets(pos):
            self._status(self.nodes[i])

    def cmd_log(self, pos: list[str], kw: dict[str, str]) -> None:
        n = self._node(pos[0])
        start = n.log.log_start()
        self._print(f"{n.id} log start={start} (term at {start - 1}: t{n.log.term_at(start - 1)})")
        for e in n.log.all_entries():
            self._print(f"  {fmt_entry(e)}")

    # --- the runtime's duties

    def _start(self, n: Node) -> None:
        cfg = n.config.with_membership(n.membership)
        n.core = self.core_cls(cfg, n.log, rng=random.Random(n.id), hard_state=n.hard_state)
        n.shown_commit = n.core.commit

    def _process(self, n: Node, *, header: bool = True) -> bool:
        core = n.core
        if core is None or not core.has_ready():
            return False
        rd = core.ready()
        assert rd is not None
        if rd.hard_state is not None:
            n.hard_state = rd.hard_state
        if rd.membership is not None:
            n.membership = rd.membership
        if rd.reset_log_to is not None:
            n.log.reset(rd.reset_log_to.start, rd.reset_log_to.term)
        if rd.truncate_after is not None:
            n.log.truncate_after(rd.truncate_after)
        n.log.append(rd.entries)
        self.mailbox.extend(rd.messages)
        if self._show is None:
            lines = fmt_ready(rd, commit_changed=rd.commit_index != n.shown_commit)
            if header:
                self._print(f"> {n.id} handling Ready")
                lines = [f"  {ln}" for ln in lines]
            self._out.extend(lines)
        else:  # `run show=...`: besides the chosen messages, only role and membership changes
            if rd.soft_state is not None:
                s = rd.soft_state
                self._print(f"{n.id} is {s.role.value} term={s.term} leader={s.leader}")
            if rd.membership is not None:
                self._print(f"{n.id} Membership {fmt_membership(rd.membership)}")
            if rd.reset_log_to is not None:
                r = rd.reset_log_to
                self._print(f"{n.id} ResetLog start={r.start} term={r.term}")
        n.shown_commit = rd.commit_index
        self._check_applied(n.id, rd.committed_entries)
        try:
            core.advance(rd)
        except AssertionError as e:  # a broken core contract: make it visible in the output
            self._print(f"!! AssertionError in {n.id}: {e}")
        return True

    def _deliver(self, rule: Rule) -> bool:
        now = [m for m in self.mailbox if rule.matches(m)]
        if not now:
            return False
        self.mailbox = [m for m in self.mailbox if not rule.matches(m)]
        for to in sorted({m.to for m in now}):
            batch = [m for m in now if m.to == to]
            if self._show is None:
                self._print(f"> {to} receiving messages")
            for m in batch:
                self._step(m)
        return True

    def _step(self, m: Message) -> None:
        quiet = self._show is not None and m.type not in self._show
        indent = "" if self._show is not None else "  "
        node = self.nodes.get(m.to)
        if any(r.matches(m) for r in self.rules):
            if not quiet:
                self._print(f"{indent}dropped: {fmt_msg(m)}")
            return
        if node is None or node.core is None:
            if not quiet:
                self._print(f"{indent}dropped ({m.to} is down): {fmt_msg(m)}")
            return
        if not quiet:
            self._print(f"{indent}{fmt_msg(m)}")
        try:
            node.core.step(m)
        except AssertionError as e:  # a broken core contract: make it visible in the output
            self._print(f"!! AssertionError in {m.to}: {e}")

    def _stabilize(self, ids: list[NodeId]) -> None:
        for _ in range(STABILIZE_ROUNDS_MAX):
            busy = False
            for i in ids:
                busy |= self._process(self.nodes[i])
            for i in ids:
                busy |= self._deliver(Rule(None, i, None))
            if not busy:
                return
        self._print(f"!! not stable after {STABILIZE_ROUNDS_MAX} rounds")

    def _check_applied(self, i: NodeId, entries: tuple[Entry, ...]) -> None:
        for e in entries:
            seen = self.applied.setdefault(e.last, (i, e))
            if seen[1] != e:
                self._print(
                    f"!! SAFETY: {i} applied {fmt_entry(e)} but {seen[0]} applied "
                    f"{fmt_entry(seen[1])} at the same offset"
                )

    def _status(self, n: Node) -> None:
        core = n.core
        if core is None:
            self._print(f"{n.id}: down")
            return
        extra = " recovering" if core.recovering else ""
        self._print(
            f"{n.id}: {core.role.value} term={core.term} vote={core.vote} leader={core.leader} "
            f"commit={core.commit} applied={core.applied} last={core.log.last_index()} "
            f"log-start={core.log.log_start()} {fmt_membership(core.membership)}{extra}"
        )
        for p in sorted(core.progress):
            pr = core.progress[p]
            line = f"  {p}: {pr.state.value} match={pr.match} next={pr.next}"
            if pr.state == ProgressState.SNAPSHOT:
                line += f" pending={pr.pending_log_start} install-ticks={pr.install_elapsed}"
            if len(pr.inflights):
                line += f" inflight={len(pr.inflights)}"
            if pr.is_paused():
                line += " paused"
            self._print(line)

    # --- helpers

    def _print(self, line: str) -> None:
        self._out.append(line)

    def _node(self, word: str) -> Node:
        n = self.nodes.get(NodeId(int(word)))
        if n is None:
            raise ValueError(f"no node {word}")
        return n

    def _core(self, word: str) -> RaftCore:
        core = self._node(word).core
        if core is None:
            raise ValueError(f"node {word} is down")
        return core

    def _live(self) -> list[RaftCore]:
        return [n.core for _, n in sorted(self.nodes.items()) if n.core is not None]

    def _targets(self, pos: list[str]) -> list[NodeId]:
        return [NodeId(int(p)) for p in pos] if pos else sorted(self.nodes)


def _ids(text: str) -> tuple[NodeId, ...]:
    inner = text.strip("()")
    return tuple(NodeId(int(x)) for x in inner.split(",") if x)


def _bool(text: str) -> bool:
    if text not in ("true", "false"):
        raise ValueError(f"expected true or false, got {text!r}")
    return text == "true"


def _times(pos: list[str]) -> int:
    reps = [p for p in pos if re.fullmatch(r"x\d+", p)]
    return int(reps[0][1:]) if reps else 1


def _rule(kw: dict[str, str]) -> Rule:
    return Rule(
        NodeId(int(kw["from"])) if "from" in kw else None,
        NodeId(int(kw["to"])) if "to" in kw else None,
        MessageType(kw["type"]) if "type" in kw else None,
    )
