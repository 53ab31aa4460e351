"""The membership nemesis' operations: add a spare node, decommission a member, move a partition.

Theory of operation. These are not faults but the operator's changes (issue 17), made through
the same client calls `tidelog cluster add-node` / `decommission` and `tidelog partition
reassign` use, while the fault nemesis kills, pauses and partitions around them. Each operation
blocks until the cluster says it is done (the new node `active` and a metadata voter, the old
one `removed` and its process gone, the partition's replicas the target) or its timeout, and
records what happened in `detail["outcome"]` ("ok", "refused: ...", "timeout: ..."), which the
run's fault list (run.json `executed`, summary.txt) shows: a nemesis that did nothing is
visible, and tests require each kind to have succeeded.

The backend's member set (`Backend.nodes`) follows the cluster's: a spare becomes a member once
admitted, a decommissioned node stops being one once removed, so fault targets, heal-all, the
minority count and the final replica comparison all use the current members.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from tidelog.chaos.backend import Backend, node_id
from tidelog.chaos.workload import ClusterView

if TYPE_CHECKING:
    from tidelog.client import Admin
    from tidelog.client.security import ClientSecurity

__all__ = ["ADD_TIMEOUT_S", "DECOMMISSION_TIMEOUT_S", "REASSIGN_TIMEOUT_S", "MembershipOps"]

ADD_TIMEOUT_S = 45.0  # admitted -> active and a metadata voter
DECOMMISSION_TIMEOUT_S = 60.0  # draining -> removed (its replicas moved first)
REASSIGN_TIMEOUT_S = 45.0  # target committed -> the replicas are the target
REMOVED_EXIT_S = 15.0  # a removed node stops itself within 3 s of applying its removal
POLL_S = 0.3


class NoCandidate(Exception):
    """Nothing to do right now (no spare left, too few members, no live node to move to)."""


class MembershipOps:
    """add-node, decommission and reassign against a backend with spare slots."""

    def __init__(self, backend: Backend, view: ClusterView, *, topic: str,
                 security: ClientSecurity | None = None) -> None:
        self._b = backend
        self._view = view
        self._topic = topic
        self._security = security
        self.leaving: set[str] = set()  # being decommissioned: no other fault or move targets it

    # --- choosing -------------------------------------------------------------------------------

    def next_spare(self) -> str:
        node = self._b.spare()  # type: ignore[attr-defined]
        if node is None:
            raise NoCandidate("no spare node slot left")
        return node

    def decommission_target(self, rng: random.Random, busy: set[str]) -> str:
        """A seeded live member other than the newest, while more members than at start remain
        (so the run never shrinks the cluster below its initial size)."""
        members = list(self._b.nodes)
        if len(members) <= len(self._b.initial):  # type: ignore[attr-defined]
            raise NoCandidate(f"only {len(members)} members: decommission would go below the "
                              "initial size")
        newest = members[-1]
        free = [n for n in members if n != newest and n not in busy and n not in self.leaving
                and self._b.is_running(n)]
        if not free:
            raise NoCandidate("no free member to decommission")
        return rng.choice(free)

    def reassign_target(self, rng: random.Random, partitions: int, busy: set[str]
                        ) -> tuple[int, tuple[str, ...], tuple[str, ...]]:
        """(partition, its replicas now, a target on other live members): the newest member
        replaces a follower when it holds no replica of the partition, else a random live
        non-replica replaces a random replica. The leader's slot is kept first."""
        snap = self._view.snapshot()
        live = [n for n in self._b.nodes if n in snap.answered and n not in busy
                and n not in self.leaving]
        partition = rng.randrange(partitions)
        current = snap.replicas.get(partition, ((), ()))[0] or self._assigned(partition)
        if not current:
            raise NoCandidate(f"replicas of partition {partition} unknown")
        newest = self._b.nodes[-1]
        outside = [n for n in live if n not in current]
        if not outside:
            raise NoCandidate(f"no live member outside partition {partition}'s replicas "
                              f"{list(current)}")
        incoming = newest if newest in outside else rng.choice(outside)
        leader = snap.leaders.get(partition, (None, 0))[0]
        leaving_slot = [n for n in current if n != leader] or list(current)
        out = rng.choice(sorted(leaving_slot))
        target = tuple(incoming if n == out else n for n in current)
        return partition, current, target

    # --- doing ----------------------------------------------------------------------------------

    def add_node(self, node: str, detail: dict[str, object]) -> None:
        """Start spare `node` with --join, admit it as a metadata voter (so a later
        decommission of an initial voter keeps 3), wait until it is active and votes."""
        from tidelog.client import errors

        start = time.monotonic()
        self._b.start_spare(node)  # type: ignore[attr-defined]
        admitted = False
        try:
            with self._admin() as admin:
                admin.add_node(node_id(node), self._b.client_address(node), metadata_voter=True)
                admitted = True
                self._b.admit(node)  # type: ignore[attr-defined]
                self._wait(admin, node, lambda m: m.state == "active"
                           and m.metadata_role == "voter", ADD_TIMEOUT_S, "active + voter")
            _done(detail, start, "ok")
        except (errors.TidelogError, TimeoutError) as exc:
            _done(detail, start, _failure(exc))
            if not admitted:  # never admitted: not a member; stop the waiting process
                self._b.retire(node)  # type: ignore[attr-defined]

    def decommission(self, node: str, detail: dict[str, object]) -> None:
        """Decommission `node`, wait until removed and its process has exited; then it is no
        longer a member. A refusal leaves it a member."""
        from tidelog.client import errors

        start = time.monotonic()
        self.leaving.add(node)
        try:
            with self._admin() as admin:
                admin.decommission_node(node_id(node))
                self._wait(admin, node, lambda m: m.state == "removed",
                           DECOMMISSION_TIMEOUT_S, "removed")
            code = self._b.retire(node, exit_timeout_s=REMOVED_EXIT_S)  # type: ignore[attr-defined]
            detail["exit_code"] = code
            _done(detail, start, "ok" if code == 0 else f"removed, but exit code {code}")
        except (errors.TidelogError, TimeoutError) as exc:
            _done(detail, start, _failure(exc))
        finally:
            self.leaving.discard(node)

    def reassign(self, partition: int, target: Sequence[str], detail: dict[str, object]) -> None:
        """Commit the target, then wait until no reassignment of the partition is listed and
        its leader reports the target as its replicas."""
        from tidelog.client import errors

        start = time.monotonic()
        ids = [node_id(n) for n in target]
        try:
            with self._admin() as admin:
                (result,) = admin.alter_partition_reassignments({(self._topic, partition): ids})
                if result.error is not None:
                    raise result.error
                deadline = time.monotonic() + REASSIGN_TIMEOUT_S
                while True:
                    moving = {(s.topic, s.partition) for s in admin.list_partition_reassignments(
                        [self._topic])}
                    now = self._view.snapshot().replicas.get(partition, ((), ()))[0]
                    if (self._topic, partition) not in moving and set(now) == set(target):
                        break
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"partition {partition} still moving after "
                                           f"{REASSIGN_TIMEOUT_S:.0f} s (replicas {list(now)})")
                    time.sleep(POLL_S)
            _done(detail, start, "ok")
        except (errors.TidelogError, TimeoutError) as exc:
            _done(detail, start, _failure(exc))

    # --- helpers --------------------------------------------------------------------------------

    def _assigned(self, partition: int) -> tuple[str, ...]:
        """The partition's replicas as the metadata says, when the view has not seen them yet
        (early in a run, or while its poll is behind): () when the cluster cannot tell."""
        try:
            with self._admin() as admin:
                ids = admin.current_assignment([self._topic]).get((self._topic, partition), ())
        except Exception:  # noqa: BLE001 - any failure: the operation waits for its next slot
            return ()
        return tuple(f"n{i}" for i in ids)

    def _admin(self) -> Admin:
        from tidelog.client import Admin

        return Admin([self._b.client_address(n) for n in self._b.nodes],
                     request_timeout_ms=10_000, security=self._security)

    def _wait(self, admin: Admin, node: str, done: Callable[..., bool], timeout_s: float,
              what: str) -> None:
        deadline = time.monotonic() + timeout_s
        last = None
        while True:
            try:
                _, members = admin.describe_members()
                last = next((m for m in members if m.node_id == node_id(node)), last)
            except Exception:  # noqa: BLE001 - a node down mid-fault: ask again
                pass
            if last is not None and done(last):
                return
            if time.monotonic() > deadline:
                where = "unknown" if last is None else (
                    f"{last.state}, metadata {last.metadata_role}, {last.replicas} replicas")
                raise TimeoutError(f"{node} not {what} within {timeout_s:.0f} s (now: {where})")
            time.sleep(POLL_S)


def _done(detail: dict[str, object], start: float, outcome: str) -> None:
    detail["outcome"] = outcome
    detail["took_s"] = round(time.monotonic() - start, 2)


def _failure(exc: BaseException) -> str:
    from tidelog.client import errors

    kind = "refused" if isinstance(exc, errors.TidelogError) and not isinstance(
        exc, errors.Timeout) else "timeout" if isinstance(exc, TimeoutError | errors.Timeout) \
        else "failed"
    return f"{kind}: {type(exc).__name__}: {exc}"[:300]
