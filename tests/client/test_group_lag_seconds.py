"""Lag in seconds from fetched batches (client/group_lag.py, the `tidelog group` CLI's figures)
and on the node (node/groups/lag.py, the metrics' figures): the timestamp is the first data
record's at or after the committed offset, from that record's own delta, never the batch's first
or max timestamp; control batches and gaps before a batch are passed over.

The cluster figures (committed offset, one batch fetched there, the CLI's JSON) are checked in
tests/metrics/test_group_metrics_cluster.py; these pin the decoding rules on real batches."""

from __future__ import annotations

import pytest
from tidelog.client.group_lag import first_record_timestamp as client_first
from tidelog.client.group_lag import lag_of
from tidelog.node.groups.lag import PartitionLag
from tidelog.node.groups.lag import first_record_timestamp as node_first
from tidelog.proto.batch import Codec, ControlType, encode_batch, encode_control_batch

BOTH = pytest.mark.parametrize("first", [client_first, node_first], ids=["client", "node"])


def data_batch(base: int, timestamps: list[int]) -> bytes:
    return encode_batch([(None, b"v", (), ts) for ts in timestamps], codec=Codec.LZ4,
                        base_offset=base, term=1)


@BOTH
def test_the_record_at_the_offset_gives_its_own_timestamp_not_the_batchs(first) -> None:  # type: ignore[no-untyped-def]
    data = data_batch(10, [1_000, 5_000, 3_000])  # first 1000, max 5000
    assert first(data, 10) == (1_000, 10)
    assert first(data, 11) == (5_000, 11)
    assert first(data, 12) == (3_000, 12)


@BOTH
def test_control_batches_and_a_gap_before_the_next_batch_are_passed_over(first) -> None:  # type: ignore[no-untyped-def]
    noop = encode_control_batch(ControlType.RAFT_NOOP, b"", base_offset=7, term=1)
    data = noop + data_batch(10, [2_000, 2_500])  # offsets 8 and 9: compacted away
    assert first(data, 7) == (2_000, 10)
    assert first(data, 8) == (2_000, 10)


@BOTH
def test_only_control_batches_left_means_no_record_and_where_to_look_next(first) -> None:  # type: ignore[no-untyped-def]
    noop = encode_control_batch(ControlType.RAFT_NOOP, b"", base_offset=4, term=2)
    assert first(noop, 4) == (None, 5)
    assert first(data_batch(0, [1, 2]), 2) == (None, 2)  # every record is below the offset


def test_client_lag_is_zero_seconds_when_caught_up_and_never_negative() -> None:
    caught_up = lag_of(12, 12, None, True, now_ms=50_000)
    assert (caught_up.lag, caught_up.lag_seconds) == (0, 0.0)
    behind = lag_of(10, 14, 20_000, True, now_ms=50_000)
    assert (behind.lag, behind.lag_seconds, behind.first_unconsumed_timestamp_ms) == \
        (4, 30.0, 20_000)
    assert lag_of(10, 14, 60_000, True, now_ms=50_000).lag_seconds == 0.0  # clock skew
    assert lag_of(10, 14, None, True, now_ms=50_000).lag_seconds == 0.0  # control batches only
    assert lag_of(10, 14, None, False, now_ms=50_000).lag_seconds is None  # not found
    assert lag_of(15, 14, None, True, now_ms=50_000).lag == 0  # a commit ahead of a new leader


def test_node_lag_seconds_is_measured_at_scrape_time() -> None:
    behind = PartitionLag(committed=3, end_offset=9, first_unconsumed_ms=10_000,
                          timestamp_known=True, refreshed_ms=11_000)
    assert behind.lag == 6
    assert behind.lag_seconds(now_ms=12_000) == 2.0
    assert behind.lag_seconds(now_ms=14_500) == 4.5
    unknown = PartitionLag(committed=3, end_offset=9, first_unconsumed_ms=None,
                           timestamp_known=False, refreshed_ms=11_000)
    assert unknown.lag_seconds(now_ms=12_000) is None
    caught_up = PartitionLag(committed=9, end_offset=9, first_unconsumed_ms=None,
                             timestamp_known=True, refreshed_ms=11_000)
    assert (caught_up.lag, caught_up.lag_seconds(now_ms=12_000)) == (0, 0.0)


def test_lag_search_counts_records_not_control_offsets_and_retries_a_moved_leader() -> None:
    """The search both Admin and AIOAdmin drive (AIOAdmin once had its own copy, which counted
    control records as lag): one answer gives the timestamp and the control-record count; a
    NOT_LEADER result makes the partition wait for a metadata refresh and be asked again."""
    from tidelog.client.connection import Connections
    from tidelog.client.group_lag import LagSearch
    from tidelog.client.metadata import Metadata
    from tidelog.client.records import TopicPartition
    from tidelog.proto import broker_pb2

    # A real metadata cache that never dials: the search only marks it stale.
    metadata = Metadata(Connections(), ("127.0.0.1:1",), request_timeout_ms=1000,
                        max_age_ms=60_000, retry_backoff_ms=10)
    a, b = TopicPartition("t", 0), TopicPartition("t", 1)
    search = LagSearch({a: 10, b: 3})
    from tidelog.client.metadata import _description_from

    def learn(leader_of_b: int) -> None:  # a Metadata answer: a led by node 1, b by leader_of_b
        metadata._learn(_description_from(broker_pb2.MetadataResponse(
            nodes=[broker_pb2.NodeInfo(id=i, address=f"n{i}") for i in (1, 2)],
            topics=[broker_pb2.TopicMetadata(name="t", partitions=[
                broker_pb2.PartitionMetadata(partition=0, leader_id=1, replicas=[1, 2]),
                broker_pb2.PartitionMetadata(partition=1, leader_id=leader_of_b,
                                             replicas=[1, 2])])])))

    learn(leader_of_b=-1)
    calls = search.requests(metadata)
    assert search.stalled
    assert [(leader, tps) for leader, tps, _ in calls] == [("n1", [a])]
    assert [(p.partition, p.offset) for p in calls[0][2].partitions] == [(0, 10)]
    response = broker_pb2.FetchResponse(partitions=[broker_pb2.FetchPartitionResult(
        topic="t", partition=0, high_watermark=15, control_records=2,
        batches=data_batch(10, [4_000, 6_000, 7_000]))])
    search.answered(metadata, response, now_ms=10_000)
    assert search.out[a].lag == 3 and search.out[a].lag_seconds == 6.0
    assert not search.finished
    learn(leader_of_b=2)
    calls = search.requests(metadata)
    assert [(leader, tps) for leader, tps, _ in calls] == [("n2", [b])] and not search.stalled
    moved = broker_pb2.FetchResponse(partitions=[broker_pb2.FetchPartitionResult(
        topic="t", partition=1, error=broker_pb2.NOT_LEADER, high_watermark=-1)])
    search.answered(metadata, moved, now_ms=10_000)
    assert search.stalled and b in search.positions and search.last_error is not None
