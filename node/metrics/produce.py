"""Produce and fetch metrics of the client API (docs/metrics.md, "Produce, fetch and storage").

Cost: a handful of locked adds per request, never per record. Record counts come from the batch
headers (the record count field), never from decoding records. Series bound to a fixed label
value (acks, a topic) are looked up once and kept in a plain dict, so the hot path does no
`labels()` call (its lock and tuple building) after a topic's first request.

`observed_produce` / `observed_fetch` wrap the API calls in node/service.py (requests, errors,
latency, fetched records); node/client_api.py reports what it alone knows: the records of a
produce (from the validated headers) and the commit latency.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Awaitable, Callable

from prometheus_client import Counter, Histogram
from prometheus_client.metrics import MetricWrapperBase
from tidelog.node.errors import BrokerError
from tidelog.node.metrics.registry import REGISTRY
from tidelog.node.storage import StorageError
from tidelog.proto import broker_pb2 as pb

LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                     2.5, 5.0, 10.0)
"""0.5 ms .. 10 s: an acks=all produce on a local disk takes ~1-20 ms, a slow disk or a
leadership change takes 0.1-1 s, the default request timeout is 30 s (beyond the last bucket:
+Inf, and a REQUEST_TIMED_OUT error)."""

ACKS_LABELS = {pb.ACKS_ALL: "all", pb.ACKS_LEADER: "leader"}
ACKS_INVALID = "invalid"  # an acks value outside the enum (refused INVALID_REQUEST)

PRODUCE_REQUESTS = Counter(
    "tidelog_produce_requests_total", "Produce requests received (answered or refused)",
    ["acks"], registry=REGISTRY)
PRODUCE_RECORDS = Counter(
    "tidelog_produce_records_total",
    "Records written by answered Produce requests (from the batch headers)",
    ["topic"], registry=REGISTRY)
PRODUCE_BYTES = Counter(
    "tidelog_produce_bytes_total",
    "Batch bytes of answered Produce requests, as received (compressed)",
    ["topic"], registry=REGISTRY)
PRODUCE_ERRORS = Counter(
    "tidelog_produce_errors_total", "Produce requests refused, by error code (proto ErrorCode)",
    ["code"], registry=REGISTRY)
PRODUCE_LATENCY = Histogram(
    "tidelog_produce_latency_seconds",
    "Produce request received -> answered, on the leader, answered requests only",
    ["acks"], buckets=LATENCY_BUCKETS_S, registry=REGISTRY)
COMMIT_LATENCY = Histogram(
    "tidelog_commit_latency_seconds",
    "acks=all produce: batches proposed on the leader -> committed by a majority",
    buckets=LATENCY_BUCKETS_S, registry=REGISTRY)
FETCH_REQUESTS = Counter(
    "tidelog_fetch_requests_total", "Fetch requests received", registry=REGISTRY)
FETCH_RECORDS = Counter(
    "tidelog_fetch_records_total", "Records returned by Fetch (from the batch headers)",
    ["topic"], registry=REGISTRY)
FETCH_BYTES = Counter(
    "tidelog_fetch_bytes_total", "Batch bytes returned by Fetch", ["topic"], registry=REGISTRY)
FETCH_ERRORS = Counter(
    "tidelog_fetch_errors_total",
    "Fetch errors by code: a refused request, or one per partition answered with an error",
    ["code"], registry=REGISTRY)

# batch_length (int32 at byte 8), attributes (int16 at byte 21) and record_count (int32 at byte
# 27) of a batch header; see the byte-layout table in proto/batch.py. A batch's size is
# batch_length + 12. Control batches (leader-change markers) carry no data records.
_LENGTH_ATTRIBUTES_COUNT = struct.Struct(">8xi9xh4xi")
_LENGTH_PREFIX_BYTES = 12
_CONTROL_BIT = 0x10

_requests_by_acks = {label: PRODUCE_REQUESTS.labels(label)
                     for label in (*ACKS_LABELS.values(), ACKS_INVALID)}
_latency_by_acks = {label: PRODUCE_LATENCY.labels(label)
                    for label in (*ACKS_LABELS.values(), ACKS_INVALID)}
_produce_by_topic: dict[str, tuple[MetricWrapperBase, MetricWrapperBase]] = {}
_fetch_by_topic: dict[str, tuple[MetricWrapperBase, MetricWrapperBase]] = {}


def error_code_name(code: int) -> str:
    """The proto enum name of an error code ("UNKNOWN" for a number outside the enum)."""
    try:
        return pb.ErrorCode.Name(code)
    except ValueError:
        return "UNKNOWN"


def record_produced(topic: str, records: int, size_bytes: int) -> None:
    """An answered produce: its records (sum of the headers' counts) and received bytes."""
    series = _produce_by_topic.get(topic)
    if series is None:
        series = _produce_by_topic[topic] = (PRODUCE_RECORDS.labels(topic),
                                             PRODUCE_BYTES.labels(topic))
    series[0].inc(records)
    series[1].inc(size_bytes)


def record_committed(proposed_at_s: float) -> None:
    """An acks=all produce committed; `proposed_at_s` is time.perf_counter() at the proposal."""
    COMMIT_LATENCY.observe(time.perf_counter() - proposed_at_s)


async def observed_produce(
        produce: Callable[[pb.ProduceRequest], Awaitable[pb.ProduceResponse]],
        request: pb.ProduceRequest) -> pb.ProduceResponse:
    """Runs `produce`, counting the request, its error code if refused, and its latency if
    answered. Cancellation (the client went away) is neither."""
    started = time.perf_counter()
    acks = ACKS_LABELS.get(request.acks, ACKS_INVALID)
    _requests_by_acks[acks].inc()
    try:
        response = await produce(request)
    except Exception as exc:
        PRODUCE_ERRORS.labels(_code_of(exc)).inc()
        raise
    _latency_by_acks[acks].observe(time.perf_counter() - started)
    return response


async def observed_fetch(fetch: Callable[[pb.FetchRequest], Awaitable[pb.FetchResponse]],
                         request: pb.FetchRequest) -> pb.FetchResponse:
    """Runs `fetch`, counting the request, its errors, and the records and bytes it returns."""
    FETCH_REQUESTS.inc()
    try:
        response = await fetch(request)
    except Exception as exc:
        FETCH_ERRORS.labels(_code_of(exc)).inc()
        raise
    for result in response.partitions:
        if result.error:
            FETCH_ERRORS.labels(error_code_name(result.error)).inc()
        elif result.batches:
            data = result.batches
            series = _fetch_by_topic.get(result.topic)
            if series is None:
                series = _fetch_by_topic[result.topic] = (FETCH_RECORDS.labels(result.topic),
                                                          FETCH_BYTES.labels(result.topic))
            series[0].inc(count_records(data))
            series[1].inc(len(data))
    return response


def count_records(data: bytes) -> int:
    """Sum of the record counts of the data (not control) batches among whole batches laid back
    to back: headers only, one unpack per batch. Stops at a truncated tail, which a Fetch answer
    never has."""
    total = 0
    position = 0
    end = len(data) - _LENGTH_ATTRIBUTES_COUNT.size
    unpack = _LENGTH_ATTRIBUTES_COUNT.unpack_from
    while position <= end:
        length, attributes, count = unpack(data, position)
        if length <= 0:
            break
        if not attributes & _CONTROL_BIT:
            total += count
        position += length + _LENGTH_PREFIX_BYTES
    return total


def _code_of(exc: BaseException) -> str:
    """The code the service answers `exc` with (node/service.py `_unary`)."""
    if isinstance(exc, BrokerError):
        return error_code_name(exc.code)
    if isinstance(exc, StorageError):
        return "STORAGE_ERROR"
    if isinstance(exc, ValueError | KeyError):
        return "INVALID_REQUEST"
    return "UNKNOWN"
