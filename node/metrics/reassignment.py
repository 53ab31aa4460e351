"""Reassignment metrics (docs/metrics.md, "Reassignment"): moves in progress, each learner's lag
as its leader sees it, and the catch-up bytes the throttle let through.

`THROTTLED_BYTES` is counted by node/learner_throttle.py, once per message it releases (never per
record); the gauges are read at scrape time from the committed metadata and the local leaders'
Raft progress (on the event loop: node/metrics/on_loop.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Protocol

from prometheus_client import Counter
from prometheus_client.core import GaugeMetricFamily, Metric
from tidelog.node.metrics.registry import REGISTRY

if TYPE_CHECKING:
    from tidelog.node.metadata import MetadataState
    from tidelog.node.replica import Replica

THROTTLED_BYTES = Counter(
    "tidelog_reassignment_throttled_bytes",
    "Entry bytes the catch-up throttle released to learners of reassigning partitions",
    registry=REGISTRY)


class _Replicas(Protocol):
    @property
    def state(self) -> MetadataState: ...

    @property
    def partitions(self) -> Mapping[str, Replica]: ...


def reassignment_metrics(replicas: _Replicas) -> Iterable[Metric]:
    state = replicas.state
    moving = GaugeMetricFamily(
        "tidelog_partition_reassignments",
        "Partitions whose replicas are moving (committed reassignments not yet complete)",
        value=len(state.reassignments))
    lag = GaugeMetricFamily(
        "tidelog_reassignment_learner_lag_offsets",
        "Offsets a learner of a reassigning partition led here is behind the commit index",
        labels=["topic", "partition", "node"])
    for group, r in sorted(state.reassignments.items()):
        replica = replicas.partitions.get(group)
        topic = state.topic_by_id(r.topic_id)
        if replica is None or topic is None or not replica.is_leader:
            continue
        core = replica.core
        for node in sorted(core.membership.learners):
            progress = core.progress.get(node)
            behind = core.commit - (progress.match if progress is not None else -1)
            lag.add_metric([topic.name, str(r.partition), str(node)], max(0, behind))
    return [moving, lag]
