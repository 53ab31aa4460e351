"""Log lines that say what happened and why, each once per event (docs/metrics.md "Logs").

The shell calls these where the event is seen (never node/raft/, which is sans-I/O):

* `group_label`: how a Raft group is named in a log line ("events/3", "the metadata group").
* `SlowFsyncLog` (node/group_commit.py): "fsync took X ms (slower than 100 ms) for <what>", a
  WARNING, at most one per `interval_s`; the ones held back are counted in the next.
* `ThrottleLog` (node/security/quota_interceptor.py): "throttling client <id> on <quota>: <delay>
  ms", at most once per client per `interval_s` (a throttled client is throttled on every call).
* `CatchUpWatch` (node/replica_manager.py, on the tick loop): on a leader, a follower that has not
  reached the commit index for LAG_TIME_MS_MAX (10 s) "fell behind" (WARNING), and "caught up to
  the leader (match index M)" (INFO) when it reaches it again. Kafka's rule
  (replica.lag.time.max.ms, 30 s there): a follower is lagging when it has not been caught up
  for a while, not whenever it is a little behind, so a healthy follower under load (always
  one batch behind for a moment) never flaps. A stopped follower of an idle partition has
  nothing to catch up on and is not reported: the commit index does not move.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tidelog.node.replica import Replica

__all__ = ["FSYNC_SLOW_MS", "CatchUpEvent", "CatchUpWatch", "SlowFsyncLog", "ThrottleLog",
           "group_label"]

log = logging.getLogger("tidelog.node.events")

#: an fsync slower than this is logged (a WARNING: on a healthy SSD one takes a few ms)
FSYNC_SLOW_MS = 100.0
#: the quiet time between two slow-fsync warnings, and between two throttle lines of a client
LOG_INTERVAL_S = 10.0
#: a follower that has not caught up for this long is reported as fallen behind
LAG_TIME_MS_MAX = 10_000
#: how often the followers are looked at (not every tick: 1,000 partitions tick 10 times a second)
CATCH_UP_CHECK_MS = 500
#: clients whose last throttle line is remembered; past it the oldest are forgotten
THROTTLED_CLIENTS_MAX = 10_000


def group_label(group: str, topic_name: str | None, *, metadata_group: str) -> str:
    """"<topic>/<partition>" for a partition's group, "the metadata group" for that one."""
    if group == metadata_group:
        return "the metadata group"
    partition = group.partition("/")[2]
    return f"{topic_name}/{partition}" if topic_name else f"group {group}"


class SlowFsyncLog:
    """Warn about slow fsyncs, at most once per `interval_s` (thread-safe: fsyncs run in the
    executor). The threshold is read at each call, so a test can set FSYNC_SLOW_MS to 0."""

    def __init__(self, interval_s: float = LOG_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._next_at = 0.0
        self._held_back = 0

    def observe(self, seconds: float, target: object) -> None:
        """One fsync of `target` (described only when logged: this runs for every fsync)."""
        ms = seconds * 1000
        if ms < FSYNC_SLOW_MS:
            return
        now = self._clock()
        with self._lock:
            if now < self._next_at:
                self._held_back += 1
                return
            held_back, self._held_back = self._held_back, 0
            self._next_at = now + self._interval_s
        more = (f"; {held_back} more slow fsyncs in the last {self._interval_s:.0f} s not "
                "logged" if held_back else "")
        log.warning("fsync took %.1f ms (slower than %.0f ms) for %s: the disk is slow or "
                    "saturated, and acks=all writes wait for it%s", ms, FSYNC_SLOW_MS,
                    describe_syncable(target), more)


def describe_syncable(target: object) -> str:
    """What a group-commit target is, for the slow-fsync line: its log's directory."""
    plog = getattr(target, "log", target)
    directory = getattr(plog, "directory", None)
    return f"the log in {directory.name}" if directory is not None else type(target).__name__


class ThrottleLog:
    """One INFO line per throttled client per `interval_s`. Event-loop only."""

    def __init__(self, interval_s: float = LOG_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._interval_s = interval_s
        self._clock = clock
        self._last: dict[str, float] = {}  # client -> when its last line was logged

    def throttled(self, client: str, quota: str, delay_ms: int) -> bool:
        """Log the throttle unless this client's last line is younger than interval_s; True
        when a line was logged."""
        now = self._clock()
        last = self._last.get(client)
        if last is not None and now - last < self._interval_s:
            return False
        if len(self._last) >= THROTTLED_CLIENTS_MAX:
            self._forget(now)
        self._last[client] = now
        log.info("throttling client %s on %s: %d ms (over its quota; it waits that long before "
                 "its next request)", client, quota, delay_ms)
        return True

    def _forget(self, now: float) -> None:
        for client in [c for c, at in self._last.items() if now - at >= self._interval_s]:
            del self._last[client]
        while len(self._last) >= THROTTLED_CLIENTS_MAX:  # all recent: drop the oldest
            del self._last[min(self._last, key=self._last.__getitem__)]


@dataclass(frozen=True, slots=True, kw_only=True)
class CatchUpEvent:
    group: str
    follower: int
    caught_up: bool  # False: fell behind
    match: int
    commit: int


class CatchUpWatch:
    """Followers of the groups this node leads that fell behind and caught up (see the module
    docstring). `observe` is the rule on plain numbers (time counted in checks); `tick`, called
    on every Raft tick, runs it every CATCH_UP_CHECK_MS on the replicas and logs. Event-loop
    only."""

    def __init__(self, tick_ms: int, lag_ms: int = LAG_TIME_MS_MAX) -> None:
        self._every_ticks = max(1, CATCH_UP_CHECK_MS // max(1, tick_ms))
        self.lag_checks = max(1, lag_ms // (self._every_ticks * max(1, tick_ms)))
        self._ticks = 0
        self._check = 0
        # (group, follower) -> the last check it was caught up (or first seen behind) at
        self._caught_up_at: dict[tuple[str, int], int] = {}
        self._behind: set[tuple[str, int]] = set()
        self._led: set[str] = set()

    def tick(self, replicas: Iterable[Replica], label: Callable[[str], str],
             node_id: int) -> None:
        self._ticks += 1
        if self._ticks % self._every_ticks:
            return
        self._check += 1
        leading = set()
        for replica in replicas:
            if not replica.is_leader or replica.error is not None:
                continue
            leading.add(replica.group)
            core = replica.core
            matches = {int(n): int(p.match) for n, p in core.progress.items() if n != core.id}
            for event in self.observe(replica.group, matches, replica.commit_index,
                                      self._check):
                _log_catch_up(event, label(event.group), node_id)
        for group in self._led - leading:
            self.forget(group)
        self._led = leading

    def observe(self, group: str, matches: Mapping[int, int], commit: int,
                check: int) -> list[CatchUpEvent]:
        """The view at check number `check` (counting up) of a group this node leads: each
        follower's match index and the commit index. Returns the changes, each once."""
        events: list[CatchUpEvent] = []
        for follower, match in matches.items():
            key = (group, follower)
            if match >= commit:
                self._caught_up_at[key] = check
                if key in self._behind:
                    self._behind.discard(key)
                    events.append(CatchUpEvent(group=group, follower=follower, caught_up=True,
                                               match=match, commit=commit))
                continue
            since = self._caught_up_at.setdefault(key, check)
            if check - since >= self.lag_checks and key not in self._behind:
                self._behind.add(key)
                events.append(CatchUpEvent(group=group, follower=follower, caught_up=False,
                                           match=match, commit=commit))
        return events

    def forget(self, group: str) -> None:
        """This node no longer leads `group`: its next term starts from a clean slate."""
        for key in [k for k in self._caught_up_at if k[0] == group]:
            del self._caught_up_at[key]
            self._behind.discard(key)


def _log_catch_up(event: CatchUpEvent, name: str, node_id: int) -> None:
    if event.caught_up:
        log.info("replica %s on node %d caught up to the leader (match index %d)", name,
                 event.follower, event.match)
    else:
        log.warning("replica %s on node %d fell behind the leader (node %d): match index %d, "
                    "commit index %d, not caught up for %d s", name, event.follower, node_id,
                    event.match, event.commit, LAG_TIME_MS_MAX // 1000)
