"""Typed client errors, and the one place that maps wire errors to them.

Every error a user can see is a :class:`TidelogError`. Its ``retriable`` attribute says whether the
client may try again by itself (the producer and consumer do, within their timeouts); the message
says what happened and, where there is one, what to do about it.

Wire errors reach the client in three shapes, all mapped here:

* a failed unary call about one subject: a gRPC status plus trailing metadata
  ``tidelog-error-bin`` holding a serialized ``ErrorDetail`` -> :func:`from_rpc_error`;
* a per-item ``ErrorCode`` + message in a multi-item response -> :func:`from_code`;
* a transport failure (connection refused, deadline exceeded) with no ErrorDetail ->
  :func:`from_rpc_error` maps the gRPC status code itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import grpc

ERROR_DETAIL_KEY = "tidelog-error-bin"


class TidelogError(Exception):
    """Base of every error raised by the Tidelog client."""

    retriable: bool = False
    #: the proto ErrorCode number this error came from, 0 when it did not come from the wire
    code: int = 0

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# --- connection and leadership (retriable, normally handled inside the client) ----------------


class NodeUnavailable(TidelogError):
    """A node could not be reached (refused, reset, or down)."""

    retriable = True


class NotLeader(TidelogError):
    """Internal: the node asked is not the partition's leader. The client refreshes and retries."""

    retriable = True
    code = 2

    def __init__(self, message: str, *, leader_id: int = -1, leader_address: str = "") -> None:
        super().__init__(message)
        self.leader_id = leader_id
        self.leader_address = leader_address


class LeaderNotAvailable(TidelogError):
    """The partition has no leader right now (an election is under way)."""

    retriable = True
    code = 3


class Timeout(TidelogError, TimeoutError):
    """An operation did not finish in its time budget; the message names the budget."""

    retriable = True


class RequestTimedOut(Timeout):
    """The broker gave up on a request; a write may or may not have been committed."""

    code = 17


class NotEnoughReplicas(TidelogError):
    """Fewer in-sync replicas than the topic requires; retried until delivery_timeout_ms."""

    retriable = True
    code = 16


class DiskFull(TidelogError):
    """A replica's disk is full; retried until delivery_timeout_ms."""

    retriable = True
    code = 18


class CoordinatorNotAvailable(TidelogError):
    retriable = True
    code = 23


class NotCoordinator(TidelogError):
    retriable = True
    code = 24


# --- the caller's problem ---------------------------------------------------------------------


class TopicNotFound(TidelogError):
    """The topic (or partition) does not exist. Create it first: `tidelog topic create NAME`."""

    code = 4


class TopicAlreadyExists(TidelogError):
    code = 5


class InvalidTopic(TidelogError):
    code = 6


class InvalidPartitions(TidelogError):
    code = 7


class InvalidReplicationFactor(TidelogError):
    code = 8


class InvalidConfig(TidelogError):
    code = 9


class CorruptBatch(TidelogError):
    """The bytes of a batch were damaged in transit; a resend normally succeeds."""

    retriable = True
    code = 10


class InvalidBatch(TidelogError):
    code = 11


class MessageTooLarge(TidelogError):
    code = 12


class OffsetOutOfRange(TidelogError):
    """The requested offset is before the log start or after its end."""

    code = 13

    def __init__(
        self, message: str, *, topic: str = "", partition: int = -1, offset: int = -1,
        log_start_offset: int = -1, high_watermark: int = -1,
    ) -> None:
        super().__init__(message)
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.log_start_offset = log_start_offset
        self.high_watermark = high_watermark


class OutOfOrderSequence(TidelogError):
    """Idempotent producer: the broker saw a gap in sequence numbers.

    The sender treats it as retriable while an earlier batch of the same partition is still
    unacknowledged (gRPC does not keep concurrent calls in order); otherwise it is fatal for the
    batch, because records would be lost."""

    code = 14


class ProducerFenced(TidelogError):
    """Another instance of this producer (same transactional id, or the same producer id at a
    later epoch) took over: this one is a zombie. Fatal: the producer stops sending, and every
    later send raises this error."""

    code = 15


class InvalidRequest(TidelogError):
    code = 19


class StorageError(TidelogError):
    code = 20


class PolicyViolation(TidelogError):
    code = 21


class Unauthorized(TidelogError):
    """Refused: the caller may not do this (no ACL allows it), or is not logged in at all
    (then the subclass AuthenticationFailed)."""

    code = 22


class AuthenticationFailed(Unauthorized):
    """The node requires a login and none was valid (gRPC UNAUTHENTICATED): give the client
    ClientSecurity(username=..., password=...) or a client certificate (docs/security.md)."""


class UnknownMemberId(TidelogError):
    code = 25


class FencedMemberEpoch(TidelogError):
    code = 26


class GroupNotEmpty(TidelogError):
    code = 27


class GroupIdNotFound(TidelogError):
    code = 28


class InvalidTimestamp(TidelogError):
    """A record's timestamp is further from the broker's clock than the topic's
    message.timestamp.difference.max.ms allows."""

    code = 29


class QueueNotFound(TidelogError):
    """The queue does not exist. Create it: `tidelog queue create NAME --topic T`."""

    code = 30


class QueueAlreadyExists(TidelogError):
    code = 31


class LockLostError(TidelogError):
    """A settlement (ack, nack, reject, release, extend) was refused: this consumer no longer
    holds the message's lock at that delivery count (it expired and the message was redelivered,
    or it was settled already, or purged). The message may be processed elsewhere: at-least-once."""

    code = 32


class InvalidQueueConfig(TidelogError):
    code = 33


class UnknownError(TidelogError):
    code = 1


# --- raised by the client itself ---------------------------------------------------------------


class BufferFull(Timeout):
    """`Producer.send` waited max_block_ms for buffer_memory to free up. Nothing was queued."""


class ClientClosed(TidelogError):
    """The producer, consumer or admin client was closed."""


class CorruptRecordError(CorruptBatch):
    """A fetched batch of one partition cannot be decoded (checksum mismatch, malformed).

    Consumer.poll raises it on every call until the caller seeks that partition past
    `offset` (Kafka's behaviour): skipping it silently would lose records unseen."""

    retriable = False

    def __init__(self, message: str, *, topic: str, partition: int, offset: int) -> None:
        super().__init__(message)
        self.topic, self.partition, self.offset = topic, partition, offset


class WakeupError(TidelogError):
    """Consumer.wakeup() was called: the blocking poll() it interrupted raises this once."""


class ConfigError(TidelogError, ValueError):
    """A client option is out of range or inconsistent with another."""


class NoBrokersAvailable(NodeUnavailable):
    """None of the bootstrap nodes answered."""


class ClusterUnreachable(NoBrokersAvailable):
    """No bootstrap address answered within ``bootstrap_timeout_s`` and the client never reached
    the cluster: the addresses are wrong or the cluster is down. Not retriable (waiting longer
    would only hide the mistake); ``last_errors`` maps each address to why it failed last."""

    retriable = False

    def __init__(self, message: str, *, last_errors: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.last_errors = dict(last_errors or {})


_BY_CODE: dict[int, type[TidelogError]] = {
    1: UnknownError,
    2: NotLeader,
    3: LeaderNotAvailable,
    4: TopicNotFound,
    5: TopicAlreadyExists,
    6: InvalidTopic,
    7: InvalidPartitions,
    8: InvalidReplicationFactor,
    9: InvalidConfig,
    10: CorruptBatch,
    11: InvalidBatch,
    12: MessageTooLarge,
    13: OffsetOutOfRange,
    14: OutOfOrderSequence,
    15: ProducerFenced,
    16: NotEnoughReplicas,
    17: RequestTimedOut,
    18: DiskFull,
    19: InvalidRequest,
    20: StorageError,
    21: PolicyViolation,
    22: Unauthorized,
    23: CoordinatorNotAvailable,
    24: NotCoordinator,
    25: UnknownMemberId,
    26: FencedMemberEpoch,
    27: GroupNotEmpty,
    28: GroupIdNotFound,
    29: InvalidTimestamp,
    30: QueueNotFound,
    31: QueueAlreadyExists,
    32: LockLostError,
    33: InvalidQueueConfig,
}

# What to do next, appended to the broker's message when it is the caller's move.
_ADVICE: dict[int, str] = {
    4: "create it with `tidelog topic create NAME --partitions P --replication-factor R`",
    5: "pick another name or delete the topic first",
    12: "raise the topic's max message size or send smaller records/batches",
    13: "seek to an offset between log start and high watermark, or set auto_offset_reset",
    15: "another producer with the same id and a newer epoch exists; close this one",
    16: "start the missing replicas, or lower the topic's min.insync.replicas",
    30: "create it with `tidelog queue create NAME --topic TOPIC`",
}


def from_code(
    code: int, message: str = "", *, subject: str = "", leader_id: int = -1,
    leader_address: str = "",
) -> TidelogError:
    """The typed error for a wire ``ErrorCode`` (never call with NONE)."""
    assert code != 0, "from_code(NONE): there is no error to map"
    cls = _BY_CODE.get(code, UnknownError)
    text = message or cls.__name__
    if subject and subject not in text:
        text = f"{subject}: {text}"
    advice = _ADVICE.get(code)
    if advice:
        text = f"{text} ({advice})"
    if cls is NotLeader:
        return NotLeader(text, leader_id=leader_id, leader_address=leader_address)
    error = cls(text)
    if cls is UnknownError:
        error.code = code
    return error


def from_rpc_error(error: grpc.RpcError, *, subject: str = "", address: str = "") -> TidelogError:
    """The typed error for a failed gRPC call, using its ErrorDetail when the broker sent one."""
    import grpc
    from tidelog.proto import broker_pb2

    detail = None
    trailers = error.trailing_metadata() if hasattr(error, "trailing_metadata") else None
    for key, value in trailers or ():
        if key == ERROR_DETAIL_KEY:
            detail = broker_pb2.ErrorDetail.FromString(value)
            break
    status = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = (error.details() if hasattr(error, "details") else "") or ""
    if status == grpc.StatusCode.UNAUTHENTICATED:
        failed = AuthenticationFailed(f"{subject + ': ' if subject else ''}{details}")
        failed.retriable = bool(detail is not None and detail.retriable)
        return failed
    if detail is not None and detail.code != 0:
        mapped = from_code(
            detail.code, details, subject=subject, leader_id=detail.leader_id,
            leader_address=detail.leader_address,
        )
        if detail.retriable:
            mapped.retriable = True
        return mapped
    where = f" at {address}" if address else ""
    prefix = f"{subject}: " if subject else ""
    if status == grpc.StatusCode.DEADLINE_EXCEEDED:
        return Timeout(f"{prefix}request{where} exceeded its deadline ({details or 'no reply'})")
    if status in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
        return NodeUnavailable(f"{prefix}node{where} unavailable: {details or status.name}")
    if status == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return MessageTooLarge(f"{prefix}request{where} rejected as too large: {details}")
    if status == grpc.StatusCode.NOT_FOUND:
        return TopicNotFound(f"{prefix}{details or 'not found'}")
    if status == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidRequest(f"{prefix}{details or 'invalid request'}")
    if status == grpc.StatusCode.UNIMPLEMENTED:
        return InvalidRequest(f"{prefix}node{where} does not implement this call: {details}")
    return UnknownError(f"{prefix}gRPC {status.name}{where}: {details}")
