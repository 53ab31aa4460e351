"""Per-partition and per-node replication state, read at scrape time on the event loop
(docs/metrics.md, "Partitions and replication" and `tidelog_raft_term`).

One series per local replica, internal topics included, and the metadata group as topic
`__metadata`, partition 0. Everything comes from memory: the log's offsets and its segments' byte
counts (kept by PartitionLog as it appends, never a stat), the Raft core's role, leader, term and
progress. "In sync" is `Replica.in_sync_replicas` with the node's liveness view, the same
definition `tidelog cluster status` and `topic describe` show.

The metadata leader alone also exports the cluster-wide view (`tidelog_cluster_*`): the nodes of
the cluster, those alive, and the partitions that cannot have a leader because fewer than a
majority of their assigned replicas are on alive nodes. `tidelog_partitions_offline` cannot see a
partition whose replicas are all down (no node holds a running replica of it to report it); Kafka's
controller reports OfflinePartitionsCount for the same reason. Every node is a voter or a learner
of the metadata group, so its leader hears from every live node each heartbeat and its
`ReplicaManager.alive` view covers them all.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.samples import Sample
from tidelog.node.membership import member_ids
from tidelog.node.metrics.on_loop import MetricsFunction
from tidelog.node.topics import partition_group

if TYPE_CHECKING:
    from tidelog.node.metadata_service import MetadataService
    from tidelog.node.replica import Replica
    from tidelog.node.replica_manager import ReplicaManager

METADATA_TOPIC_LABEL = "__metadata"
LABELS = ("topic", "partition")


@dataclass(frozen=True, slots=True)
class _Held:
    """A local replica with its labels and how many replicas its group is assigned."""

    topic: str
    partition: str
    replica: Replica
    assigned: int


def partitions_collector(replicas: ReplicaManager, metadata: MetadataService) -> MetricsFunction:
    """The scrape-time function of node/metrics/collectors.py."""

    def collect() -> Iterable[Metric]:
        own = metadata.replica
        metadata_leader = own is not None and own.is_leader and own.error is None
        families = list(_families(replicas, _held(replicas, metadata), metadata_leader))
        if metadata_leader:
            families.extend(_cluster_families(replicas, metadata))
        return families

    return collect


def _held(replicas: ReplicaManager, metadata: MetadataService) -> Iterator[_Held]:
    """Every replica this node holds, walked from the metadata (topic names and assignments
    at hand; no lookup by topic id per partition)."""
    local = replicas.partitions
    for topic in metadata.state.topics.values():
        for partition, assigned in enumerate(topic.replicas):
            replica = local.get(partition_group(topic.topic_id, partition))
            if replica is not None:
                yield _Held(topic.name, str(partition), replica, len(assigned))
    if metadata.replica is not None:
        members = metadata.replica.core.membership.members
        yield _Held(METADATA_TOPIC_LABEL, "0", metadata.replica, len(members))


def _families(replicas: ReplicaManager, held: Iterable[_Held],
              metadata_leader: bool) -> Iterator[Metric]:
    start = _gauge("tidelog_partition_log_start_offset", "First offset still in the local log")
    end = _gauge("tidelog_partition_log_end_offset", "Next offset the local log will assign")
    hw = _gauge("tidelog_partition_high_watermark",
                "First offset not yet committed, as this replica knows it (a follower may lag "
                "the leader by a heartbeat)")
    size = _gauge("tidelog_partition_size_bytes", "Bytes of the local log's segments")
    segments = _gauge("tidelog_partition_segments", "Segment files of the local log")
    leader = _gauge("tidelog_partition_leader", "1 if this node leads the partition, else 0")
    assigned = _gauge("tidelog_partition_replicas", "Replicas the partition is assigned")
    in_sync = _gauge("tidelog_partition_in_sync_replicas",
                     "Replicas caught up to the commit index and alive (on the leader only)")
    term = _gauge("tidelog_raft_term", "Raft term of the local replica")
    led = under = offline = 0
    for h in held:
        # One labels dict shared by the partition's samples (the exposition only reads it):
        # add_metric would build one per sample, the larger part of the cost at 1,000 partitions.
        labels = {"topic": h.topic, "partition": h.partition}
        replica, plog = h.replica, h.replica.log
        _add(start, labels, plog.log_start_offset)
        _add(end, labels, plog.log_end_offset)
        _add(hw, labels, replica.high_watermark)
        _add(size, labels, plog.size_bytes)
        _add(segments, labels, len(plog.segment_base_offsets))
        _add(assigned, labels, h.assigned)
        _add(term, labels, replica.term)
        leads = replica.is_leader and replica.error is None
        _add(leader, labels, 1 if leads else 0)
        if leads:
            led += 1
            count = len(replica.in_sync_replicas(replicas.alive))
            _add(in_sync, labels, count)
            under += count < h.assigned
        if replica.leader_id is None:
            offline += 1
    yield from (start, end, hw, size, segments, leader, assigned, in_sync, term)
    yield _node_gauge("tidelog_partitions_led", "Partitions this node leads", led)
    yield _node_gauge("tidelog_partitions_under_replicated",
                      "Partitions this node leads with fewer in-sync replicas than assigned",
                      under)
    yield _node_gauge("tidelog_partitions_offline",
                      "Partitions this node holds a replica of that know no leader", offline)
    yield _node_gauge("tidelog_metadata_leader", "1 on the metadata group's leader, else 0",
                      1 if metadata_leader else 0)


def _cluster_families(replicas: ReplicaManager, metadata: MetadataService) -> Iterator[Metric]:
    """The metadata leader's view of the whole cluster. Nodes: the members (the `--peers` and
    the nodes admitted since, not the removed ones: node/membership.py);
    alive: heard from within the liveness window (3 election timeouts,
    3 s by default; this node always). A partition is offline when fewer than a majority of its
    assigned replicas are on alive nodes: Raft can elect no leader for it (all of them down is
    the case no node's `tidelog_partitions_offline` shows). Internal topics are included."""
    nodes = member_ids(replicas.config, metadata.state)
    alive = {node_id for node_id in nodes if replicas.alive(node_id)}
    offline = 0
    for topic in metadata.state.topics.values():
        for assigned in topic.replicas:
            up = sum(1 for node_id in assigned if node_id in alive)
            offline += up <= len(assigned) // 2
    yield _node_gauge("tidelog_cluster_nodes", "Nodes of the cluster (metadata leader only)",
                      len(nodes))
    yield _node_gauge("tidelog_cluster_nodes_alive",
                      "Nodes the metadata leader heard from within its liveness window, itself "
                      "included (metadata leader only)", len(alive))
    yield _node_gauge("tidelog_cluster_partitions_offline",
                      "Partitions with fewer than a majority of their assigned replicas on alive "
                      "nodes: no leader possible (metadata leader only)", offline)


def _add(family: GaugeMetricFamily, labels: dict[str, str], value: int) -> None:
    family.samples.append(Sample(family.name, labels, float(value)))


def _gauge(name: str, documentation: str) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=LABELS)


def _node_gauge(name: str, documentation: str, value: int) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)
