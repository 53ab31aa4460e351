"""Consumer-group series, exported by the node that coordinates each group (docs/metrics.md,
"Consumer groups").

Runs on the event loop at scrape time and never awaits: membership, epochs and committed offsets
come from the coordinator's memory; end offsets and the first unconsumed record's timestamp come
from the lag refresher's last round (node/groups/lag.py, every ~2 s), because the partitions may
live on other nodes. `lag_seconds` is measured against this scrape's clock.

Cardinality: one `group` label value per group this node coordinates; (group, topic, partition)
per committed partition, at most lag.LAG_PARTITIONS_MAX lag series.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

if TYPE_CHECKING:
    from tidelog.node.groups.coordinator import GroupCoordinator

__all__ = ["group_metrics"]

_PARTITION_LABELS = ["group", "topic", "partition"]


def group_metrics(coordinator: GroupCoordinator) -> Iterable[Metric]:
    """The consumer-group families of the groups `coordinator` serves right now."""
    groups = coordinator.loaded_groups()
    count = GaugeMetricFamily("tidelog_consumer_groups",
                              "Consumer groups this node coordinates")
    count.add_metric([], len(groups))
    members = GaugeMetricFamily("tidelog_consumer_group_members",
                                "Members of the group", labels=["group"])
    rebalances = CounterMetricFamily(
        "tidelog_consumer_group_rebalances",
        "Target assignments computed for the group (group epoch bumps: a member joined, left "
        "or timed out, a subscription or a subscribed topic's partition count changed)",
        labels=["group"])
    committed = GaugeMetricFamily("tidelog_consumer_group_committed_offset",
                                  "The group's committed offset (the next record it will read)",
                                  labels=_PARTITION_LABELS)
    lag = GaugeMetricFamily("tidelog_consumer_group_lag",
                            "Records between the committed offset and the high watermark "
                            "(as of the last lag refresh)", labels=_PARTITION_LABELS)
    lag_seconds = GaugeMetricFamily(
        "tidelog_consumer_group_lag_seconds",
        "Now minus the timestamp of the first record not yet consumed; 0 when caught up",
        labels=_PARTITION_LABELS)
    coordinator.lag.wanted()  # the refresher works only while someone scrapes
    snapshot = coordinator.lag.snapshot
    now_ms = int(time.time() * 1000)
    for group in groups:
        members.add_metric([group.group_id], len(group.members))
        rebalances.add_metric([group.group_id], group.epoch)
        for tp, offset in sorted(group.offsets.items()):
            labels = [group.group_id, tp.topic, str(tp.partition)]
            committed.add_metric(labels, offset.offset)
            refreshed = snapshot.get((group.group_id, tp))
            if refreshed is None:
                continue  # not refreshed yet (new commit, or its leader could not be asked)
            lag.add_metric(labels, refreshed.lag)
            seconds = refreshed.lag_seconds(now_ms)
            if seconds is not None:
                lag_seconds.add_metric(labels, seconds)
    return [count, members, rebalances, committed, lag, lag_seconds]
