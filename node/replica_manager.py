"""This node's partition replicas and the Raft plumbing every replica shares.

The manager starts and deletes local replicas to match the committed metadata (`reconcile`),
routes Raft traffic (outbound over the transport; inbound validated in full before stepping: a bad
message is the peer's fault and dropped, an exception while stepping a valid one is local and
stops that replica), keeps the leader of every group as announced over the peer streams, ticks
every replica, moves leadership back to preferred leaders, and hands it over at shutdown.
It sees the metadata only through `MetadataView`.

Idle groups quiesce (docs/raft.md, "Quiescence"): a sleeping replica is not ticked, and one
liveness beat per node pair (`NodeLiveness`, node/liveness.py) replaces the per-group
heartbeats; a peer silent for an election timeout, or whose link goes down, has every sleeping
group it is a member of woken. A replica stopped by a local error is announced to the peers on
every beat (a LeaderInfo with leader_id RESIGNED), which wakes their replicas of that group: a
stopped leader on a live node would otherwise leave its sleeping followers asleep.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import functools
import logging
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from tidelog.node.config import NodeConfig
from tidelog.node.group_commit import GroupCommitter
from tidelog.node.learner_throttle import LearnerThrottle
from tidelog.node.liveness import Heard, NodeLiveness, wake_groups
from tidelog.node.log_events import CatchUpWatch, group_label
from tidelog.node.membership_state import NodeState, node_state
from tidelog.node.metadata import MetadataState, TopicInfo
from tidelog.node.metadata_service import METADATA_GROUP
from tidelog.node.metrics.raft import RaftObserver
from tidelog.node.raft import Message, NodeId, RaftConfig, RemoteProtocolError
from tidelog.node.raft_validation import MalformedRaftMessage, decode_raft_message
from tidelog.node.raft_wire import to_wire
from tidelog.node.reassignment import PROMOTE_LAG_MAX, learner_rate
from tidelog.node.reassignment_state import nodes_running, preferred_leader
from tidelog.node.replica import Replica
from tidelog.node.replica_configs import log_config, raft_config
from tidelog.node.security.keyring import with_at_rest_encryption
from tidelog.node.storage import StorageError
from tidelog.node.storage.dirs import remove_directory
from tidelog.node.topics import partition_group
from tidelog.node.transport import Transport
from tidelog.proto import cluster_pb2 as cpb

log = logging.getLogger(__name__)

LEADER_ANNOUNCE_INTERVAL_S = 2.0
LEADERS_POLL_S = 0.05
RESIGNED = -1  # LeaderInfo.leader_id: "my replica of this group stopped; wake yours"
FIRST_CAMPAIGN_TICKS = 2  # a new group's preferred leader campaigns this soon (_first_election)
OPEN_THREADS = 8  # replicas opened at once, off the event loop (_start_partition)


class MetadataView(Protocol):
    """What the replica manager reads of the metadata: the applied state and its replica."""

    @property
    def state(self) -> MetadataState: ...

    @property
    def replica(self) -> Replica | None: ...


@dataclass(frozen=True, slots=True)
class LeaderHint:
    leader_id: int
    term: int


class ReplicaManager:
    """Owned by the event loop."""

    def __init__(self, config: NodeConfig, *, data_dir: Path, committer: GroupCommitter,
                 metadata: MetadataView, on_soft_state: Callable[[Replica], None],
                 is_member: Callable[[int], bool] | None = None) -> None:
        self.config = config
        # Who may open a Raft stream to us (node/membership.py); default: the --peers.
        self._is_member = is_member or (lambda node_id: node_id in config.peers)
        self.id = config.node_id
        self.data_dir = data_dir
        # Random per process start, on every batch we send: peers see a restart (node/liveness.py).
        self.incarnation = random.getrandbits(63)
        self.transport = Transport(self.id, config.peer_addresses, self._on_unreachable,
                                   incarnation=self.incarnation)
        self.partitions: dict[str, Replica] = {}  # group → local replica
        self.leader_hints: dict[str, LeaderHint] = {}
        self._metadata = metadata
        self._committer = committer
        self._on_soft_state_hook = on_soft_state
        self._reconcile_pending = False
        self._reported_dirs: set[str] = set()
        self._deleting: set[str] = set()  # directories of replicas being closed and deleted
        # The delete tasks themselves: the loop keeps only weak references to tasks, and close()
        # lets them finish, so a node stopped right after a delete does not leave it half done.
        self._delete_tasks: set[asyncio.Task[None]] = set()
        # Replicas being opened in _open_pool: group -> directory name (owned, not swept).
        self._opening: dict[str, str] = {}
        self._open_futures: set[asyncio.Future[None]] = set()
        self._open_pool = concurrent.futures.ThreadPoolExecutor(
            OPEN_THREADS, thread_name_prefix="replica-open")
        self._closed = False
        self.catch_up = CatchUpWatch(config.tick_ms)  # "replica ... caught up" log lines
        self.raft_metrics = RaftObserver()  # elections, leader changes, append round trips
        self.liveness = NodeLiveness([p for p in config.peers if p != self.id],
                                     timeout_ticks=config.election_ticks,
                                     beat_ticks=config.heartbeat_ticks)
        # Catch-up of reassignment learners, paced (node/learner_throttle.py).
        self.learner_throttle = LearnerThrottle(
            self._send_now, lambda group, node: learner_rate(
                self.state, self.partitions.get(group), node))

    # ------------------------------------------------------------------ queries

    @property
    def state(self) -> MetadataState:
        return self._metadata.state

    def all_replicas(self) -> list[Replica]:
        out = list(self.partitions.values())
        if self._metadata.replica is not None:
            out.append(self._metadata.replica)
        return out

    def stopped(self) -> list[str]:
        """Groups whose local replica stopped after a local failure."""
        return [r.group for r in self.all_replicas() if r.error is not None]

    def is_peer(self, node_id: int) -> bool:
        """A node of this cluster other than this one (who may open a Raft stream to us)."""
        return node_id != self.id and self._is_member(node_id)

    def alive(self, node_id: int) -> bool:
        return self.transport.alive(node_id, within_s=self._liveness_s())

    def leader_of(self, group: str) -> tuple[int, str] | None:
        """(leader id, its client address) of a group, as last announced; None if unknown."""
        hint = self.leader_hints.get(group)
        if hint is None:
            return None
        return hint.leader_id, self.client_address(hint.leader_id)

    def client_address(self, node_id: int) -> str:
        return self.state.nodes.get(node_id, self.config.peers.get(node_id, ""))

    def topic_of(self, group: str) -> TopicInfo | None:
        topic_id, _, _ = group.partition("/")
        return self.state.topic_by_id(int(topic_id)) if topic_id.isdigit() else None

    def partition_replicas(self) -> list[tuple[str, Replica]]:
        return list(self.partitions.items())

    def group_name(self, group: str) -> str:
        if group == METADATA_GROUP:
            return "metadata"
        topic = self.topic_of(group)
        return f"{topic.name}-{group.partition('/')[2]}" if topic else group

    async def wait_for_leaders(self, names: list[str], timeout_s: float) -> None:
        """Best effort: return once every partition of these topics has a known leader."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            missing = [
                1 for name in names if (t := self.state.topics.get(name)) is not None
                for p in range(t.partitions)
                if partition_group(t.topic_id, p) not in self.leader_hints
            ]
            if not missing:
                return
            await asyncio.sleep(LEADERS_POLL_S)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self.transport.start()
        self.reconcile()

    async def close(self) -> None:
        self._closed = True
        self.learner_throttle.close()
        if self._open_futures:  # replicas still opening: let them finish, then close them
            await asyncio.gather(*self._open_futures, return_exceptions=True)
        self._open_pool.shutdown(wait=False)
        await self.transport.close()
        if self._delete_tasks:
            await asyncio.gather(*self._delete_tasks, return_exceptions=True)
        for replica in list(self.partitions.values()):
            await replica.close()

    # ------------------------------------------------------------------ matching the metadata

    def schedule_reconcile(self) -> None:
        if not self._reconcile_pending:
            self._reconcile_pending = True
            with contextlib.suppress(RuntimeError):
                asyncio.get_running_loop().call_soon(self.reconcile)

    def reconcile(self) -> None:
        """Start replicas the metadata assigns here (a reassignment's target included);
        delete those of deleted topics and those moved away (node/reassignment_state.py)."""
        self._reconcile_pending = False
        wanted: dict[str, tuple[TopicInfo, int]] = {}
        kept: set[str] = set()  # may keep its replica: still involved in a reassignment
        for topic in self.state.topics.values():
            for partition, replicas in enumerate(topic.replicas):
                run, keep = nodes_running(self.state, topic.topic_id, partition, replicas)
                if self.id in run:
                    wanted[partition_group(topic.topic_id, partition)] = (topic, partition)
                if self.id in keep:
                    kept.add(partition_group(topic.topic_id, partition))
        for group, (topic, partition) in wanted.items():
            if group not in self.partitions and group not in self._opening:
                self._start_partition(topic, partition)
        for group in list(self.partitions):
            if group in wanted or group in kept:
                continue
            topic_id = int(group.split("/")[0])
            if topic_id in self.state.deleted_topic_ids or self.topic_of(group) is not None:
                replica = self.partitions.pop(group)
                self._deleting.add(replica.directory.name)
                task = asyncio.get_running_loop().create_task(
                    self._delete_replica(replica), name=f"delete-{replica.directory.name}")
                self._delete_tasks.add(task)
                task.add_done_callback(self._delete_tasks.discard)
        self._sweep_partition_dirs()

    def _sweep_partition_dirs(self) -> None:
        """Directories no running replica owns: delete those of deleted topics (deleted while this
        node was down); report the rest once and leave them alone (quarantine, never remove)."""
        # A replica being deleted still owns its directory until it has closed its files
        # (sweeping it here made that close fail: found by tests/node/test_rpc_fuzz.py).
        running = ({r.directory.name for r in self.partitions.values()} | self._deleting
                   | set(self._opening.values()))
        for entry in (self.data_dir / "partitions").iterdir():
            if entry.name in running or not entry.is_dir():
                continue
            _, _, suffix = entry.name.rpartition(".")
            topic_id = int(suffix) if suffix.isdigit() else None
            if topic_id is not None and topic_id in self.state.deleted_topic_ids:
                shutil.rmtree(entry, ignore_errors=True)
                log.info("deleted %s: its topic was deleted while this node was away", entry.name)
            elif self._moved_away(entry.name):
                remove_directory(entry)
                log.info("deleted %s: its partition moved to other nodes while this node was "
                         "away", entry.name)
            elif ((topic_id is None or topic_id < self.state.next_topic_id)
                  and entry.name not in self._reported_dirs):
                self._reported_dirs.add(entry.name)
                log.warning("quarantined %s: no topic in the committed metadata accounts for "
                            "it; left on disk untouched for an operator", entry.name)

    def _moved_away(self, name: str) -> bool:
        """A replica directory of a live partition that no longer involves this node."""
        stem, _, suffix = name.rpartition(".")
        _, _, partition = stem.rpartition("-")
        topic = self.state.topic_by_id(int(suffix)) if suffix.isdigit() else None
        if topic is None or not partition.isdigit() or int(partition) >= topic.partitions:
            return False
        if self._partition_dir(topic, int(partition)).name != name:
            return False
        _, keep = nodes_running(self.state, topic.topic_id, int(partition),
                                topic.replicas[int(partition)])
        return self.id not in keep

    def _partition_dir(self, topic: TopicInfo, partition: int) -> Path:
        return self.data_dir / "partitions" / f"{topic.name}-{partition}.{topic.topic_id}"

    def _start_partition(self, topic: TopicInfo, partition: int) -> None:
        """Open the replica in `_open_pool`, off the event loop, OPEN_THREADS at once: opening
        reads and verifies the log and fsyncs its directory's parent, ~10-25 ms per replica,
        so a node with 1,000 replicas spent most of its restart with the loop blocked (no
        health answer, no Raft traffic for the replicas already open). Their fsyncs now
        overlap. Until it is open, messages for the group are dropped (Raft retries)."""
        group = partition_group(topic.topic_id, partition)
        directory = self._partition_dir(topic, partition)
        self._opening[group] = directory.name
        build = functools.partial(
            Replica, group=group, directory=directory,
            log_config=with_at_rest_encryption(log_config(self.config, topic.configs),
                                               self.config.security.encryption_keyring),
            raft_config=self._replica_raft_config(topic, partition),
            committer=self._committer, send=self.send_raft, on_soft_state=self.on_soft_state)
        future = asyncio.get_running_loop().run_in_executor(self._open_pool, build)
        done = asyncio.ensure_future(self._opened(future, topic, partition, group))
        self._open_futures.add(done)
        done.add_done_callback(self._open_futures.discard)

    async def _opened(self, opening: asyncio.Future[Replica], topic: TopicInfo, partition: int,
                      group: str) -> None:
        try:
            replica = await opening
        except (StorageError, ValueError, OSError) as exc:  # one bad replica must not stop others
            log.error("cannot open replica %s-%d (%s): %s; left on disk for inspection",
                      topic.name, partition, group, exc)
            return
        finally:
            self._opening.pop(group, None)
        if self._closed:
            await replica.close()
            return
        self.partitions[group] = replica
        replica.start()
        self._first_election(replica, topic, partition)
        log.info("started replica of %s-%d (group %s, replicas %s)",
                 topic.name, partition, group, topic.replicas[partition])
        if not self._opening:
            self.schedule_reconcile()  # the metadata may have moved on while they opened

    def _first_election(self, replica: Replica, topic: TopicInfo, partition: int) -> None:
        """A group created a moment ago (term 0, empty log) elects its preferred leader first:
        it campaigns after FIRST_CAMPAIGN_TICKS (and again as often while the other nodes are
        still creating their replicas: its pre-votes change nothing), the others only after
        several election timeouts. Each of a new topic's partitions then elects once, where
        the balancer would move it anyway, instead of electing at random and being moved (two
        elections, each a raft.state fsync on every replica: with 1,000 partitions, minutes
        under load)."""
        core = replica.core
        if core.term != 0 or core.log.last_index() != -1:
            return
        preferred = preferred_leader(self.state, topic.topic_id, partition,
                                     topic.replicas[partition])
        if preferred is None:
            return
        ticks = self.config.election_ticks
        core.campaign_after(FIRST_CAMPAIGN_TICKS if preferred == self.id
                            else 3 * ticks + random.randrange(ticks))

    def _replica_raft_config(self, topic: TopicInfo, partition: int) -> RaftConfig:
        """A replica of the replica list starts as one of its voters. A node only in a
        reassignment's target starts as a LEARNER (it must not vote or campaign until the
        leader promotes it); it learns the real membership from the CONFIG entries it is
        sent, and until then accepts Raft messages from every node of the list or the
        target (the leader may be either)."""
        replicas = topic.replicas[partition]
        if self.id in replicas:
            config = raft_config(self.config, replicas)
        else:
            r = self.state.reassignments.get(partition_group(topic.topic_id, partition))
            others = [n for n in [*replicas, *(r.target if r else ())] if n != self.id]
            config = raft_config(self.config, list(dict.fromkeys(others)), [self.id])
        return dataclasses.replace(config, promote_lag_max=PROMOTE_LAG_MAX)

    async def _delete_replica(self, replica: Replica) -> None:
        try:
            await replica.close()
            await asyncio.get_running_loop().run_in_executor(
                None, remove_directory, replica.directory)  # durably: fsync the parent
            log.info("deleted replica %s (its topic was deleted or the partition moved away)",
                     replica.directory.name)
        except (OSError, StorageError) as exc:  # a failed fsync at close is a StorageError
            log.error("could not delete replica %s: %s; left on disk", replica.directory, exc)
        finally:
            self.leader_hints.pop(replica.group, None)
            self.raft_metrics.forget(replica.group)
            self._deleting.discard(replica.directory.name)

    # ------------------------------------------------------------------ raft plumbing

    def send_raft(self, group: str, message: Message) -> None:
        self.learner_throttle.send(group, message)

    def _send_now(self, group: str, message: Message) -> None:
        self.raft_metrics.sent(group, message)
        self.transport.send(message.to, to_wire(group, message))

    def receive_raft(self, batch: cpb.RaftBatch) -> None:
        """Step a batch from a peer's stream (the caller checked from_node is that peer).

        Each message is decoded and validated completely first: a bad one is the peer's fault,
        logged and dropped. An exception while stepping a valid one is a local fault: that
        replica stops with the real reason (issue 11, defect 12)."""
        sender = batch.from_node
        self.transport.heard_from(sender)
        heard = self.liveness.heard(sender, batch.incarnation)
        if heard is Heard.BACK:
            log.info("node %d is heard from again", sender)
        elif heard is Heard.RESTARTED:
            self._peer_lost(sender, "restarted")
        for info in batch.leaders:
            if info.leader_id == sender and info.term >= 0 and self._known_group(info.group):
                self._note_leader(info.group, info.leader_id, info.term)
            elif info.leader_id == RESIGNED:
                replica = (self._metadata.replica if info.group == METADATA_GROUP
                           else self.partitions.get(info.group))
                if replica is not None and replica.error is None:
                    replica.core.wake()
        for wire in batch.messages:
            replica = (self._metadata.replica if wire.group == METADATA_GROUP
                       else self.partitions.get(wire.group))
            if replica is None or replica.error is not None:
                continue  # not created here yet (metadata still applying), or stopped
            # A replica that was down while its group's membership changed still holds the old
            # membership, which may not name the new leader: it must hear that leader to learn
            # the change from the log (Raft accepts a leader's messages whatever the receiver's
            # configuration; a vote only counts among the counter's voters). Any node of the
            # cluster may therefore speak in any group; a removed node may not.
            members = replica.core.membership.members
            if sender not in members and self.is_peer(sender):
                members = members | {NodeId(sender)}
            try:
                message = decode_raft_message(
                    wire, self_id=self.id, from_node=sender, members=members)
            except MalformedRaftMessage as exc:
                log.warning("dropped a malformed raft message from node %d for %s: %s",
                            sender, wire.group, exc)
                continue
            self.raft_metrics.received(wire.group, message)
            try:
                replica.step(message)
            except RemoteProtocolError as exc:
                # The core refused, having changed nothing, what no correct peer sends (e.g. an
                # acknowledgement of an offset that is not an entry boundary of our log, seen
                # after a power cut under fsync=interval): the peer's fault, so drop it and keep
                # serving; the replica stays correct and the leader keeps the majority going.
                log.warning("dropped a raft message from node %d for %s that breaks the "
                            "protocol: %s", sender, self.group_name(replica.group), exc)
            except Exception as exc:  # our own log or state failed: not the peer's fault
                self._stop_replica(replica, exc, f"stepping {message.type.value} from node "
                                                 f"{sender}")

    def _known_group(self, group: str) -> bool:
        if group == METADATA_GROUP or group in self.partitions:
            return True
        topic_id, sep, partition = group.partition("/")
        if not (sep and topic_id.isdigit() and partition.isdigit()):
            return False
        topic = self.state.topic_by_id(int(topic_id))
        return topic is not None and int(partition) < topic.partitions

    def _stop_replica(self, replica: Replica, exc: BaseException, doing: str) -> None:
        """A local failure: the replica takes no more input (its core may be half-updated, so
        nothing of it may be persisted or sent); produce refuses with STORAGE_ERROR and the
        health service "tidelog.v1.Replicas" reports NOT_SERVING."""
        replica.error = exc
        log.error("replica %s stopped by a local error while %s: %s: %s",
                  self.group_name(replica.group), doing, type(exc).__name__, exc,
                  exc_info=exc)

    def _on_unreachable(self, peer: int) -> None:
        self.raft_metrics.unreachable(peer)
        for replica in self.all_replicas():
            replica.report_unreachable(peer)
        self._peer_lost(peer, "its link went down")

    def _peer_lost(self, peer: int, why: str) -> None:
        """Wake every sleeping group `peer` is a member of: its followers here campaign if it
        led them, and groups led here check their quorum again."""
        woken = wake_groups(self.all_replicas(), peer)
        if woken:
            log.info("woke %d quiesced groups: node %d %s", woken, peer, why)

    def on_soft_state(self, replica: Replica) -> None:
        """A replica's role or leader changed: remember and announce it, then tell the node."""
        self.raft_metrics.on_soft_state(replica)
        leader = replica.leader_id
        if leader is not None:
            self._note_leader(replica.group, leader, replica.term)
        if replica.is_leader:
            log.info("leader elected for %s in term %d (node %d)", self.log_label(replica.group),
                     replica.term, self.id)
            self.transport.broadcast_leader(
                cpb.LeaderInfo(group=replica.group, leader_id=self.id, term=replica.term))
        self._on_soft_state_hook(replica)

    def log_label(self, group: str) -> str:
        """How log lines name a group: "<topic>/<partition>", or "the metadata group"."""
        topic = self.topic_of(group)
        return group_label(group, topic.name if topic else None, metadata_group=METADATA_GROUP)

    def _note_leader(self, group: str, leader_id: int, term: int) -> None:
        known = self.leader_hints.get(group)
        if known is None or term >= known.term:
            self.leader_hints[group] = LeaderHint(leader_id, term)

    # ------------------------------------------------------------------ periodic work

    async def tick_loop(self) -> None:
        interval = self.config.tick_ms / 1000
        next_at = time.monotonic()
        while True:
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            if time.monotonic() - next_at > 5 * interval:
                next_at = time.monotonic()  # we were paused; don't replay missed ticks
            replicas = self.all_replicas()
            for replica in replicas:
                if replica.error is None and not replica.core.quiesced:
                    replica.tick()
            self._tick_liveness(replicas)
            self.catch_up.tick(replicas, self.log_label, self.id)

    def _tick_liveness(self, replicas: list[Replica]) -> None:
        tick = self.liveness.tick()
        if tick.beat:
            for replica in replicas:  # rare: a replica stopped by a local error
                if replica.error is not None:
                    self.transport.broadcast_leader(cpb.LeaderInfo(
                        group=replica.group, leader_id=RESIGNED, term=replica.term))
            self.transport.beat()
        for peer in tick.lost:
            self._peer_lost(peer, "was silent for an election timeout")

    async def announce_loop(self) -> None:
        while True:
            await asyncio.sleep(LEADER_ANNOUNCE_INTERVAL_S)
            for replica in self.all_replicas():
                if replica.is_leader:
                    self.transport.broadcast_leader(
                        cpb.LeaderInfo(group=replica.group, leader_id=self.id, term=replica.term))

    async def balance_loop(self) -> None:
        """Move leadership back to preferred leaders (the first replica) once they are caught up."""
        while True:
            await asyncio.sleep(self.config.leader_balance_interval_ms / 1000)
            for group, replica in list(self.partitions.items()):
                topic = self.topic_of(group)
                partition = int(group.split("/")[1])
                preferred = preferred_leader(self.state, topic.topic_id, partition,
                                             topic.replicas[partition]) if topic else None
                if (preferred is None or preferred == self.id or not replica.is_leader
                        or replica.core.lead_transferee is not None):
                    continue
                progress = replica.core.progress.get(NodeId(preferred))
                if progress is None or progress.match < replica.commit_index:
                    continue
                if not self.alive(preferred) or node_state(self.state, preferred) in (
                        NodeState.DRAINING, NodeState.REMOVED):  # leaving: never back to it
                    continue
                log.info("moving leadership of %s to preferred leader %d",
                         self.group_name(group), preferred)
                with contextlib.suppress(Exception):
                    replica.transfer_leadership(preferred)

    async def hand_over_leadership(self) -> None:
        deadline = time.monotonic() + self.config.shutdown_transfer_ms_max / 1000
        for replica in self.all_replicas():
            if not replica.is_leader:
                continue
            target = self._transfer_target(replica)
            if target is not None:
                with contextlib.suppress(Exception):
                    replica.transfer_leadership(target)
        while time.monotonic() < deadline and any(r.is_leader for r in self.all_replicas()
                                                  if self._transfer_target(r) is not None):
            await asyncio.sleep(0.05)

    def _transfer_target(self, replica: Replica) -> int | None:
        for node_id, progress in replica.core.progress.items():
            if node_id == self.id or node_id not in replica.core.membership.voters:
                continue
            if progress.match >= replica.commit_index and self.alive(node_id):
                return int(node_id)
        return None

    def _liveness_s(self) -> float:
        return 3 * self.config.election_ticks * self.config.tick_ms / 1000
