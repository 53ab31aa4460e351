"""Errors the node raises, by fault: the operator's (config) or the client's (a bad request).

Each maps to one wire ErrorCode, so the gRPC layer turns any of them into a precise status.
"""

from __future__ import annotations

from tidelog.proto import broker_pb2 as pb


class ConfigError(ValueError):
    """The operator's configuration is invalid; the message says which flag and why."""


class BrokerError(Exception):
    """A request the node refuses; `code` is the wire ErrorCode, the message is for a person."""

    code: int = pb.UNKNOWN
    retriable: bool = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotLeaderError(BrokerError):
    code = pb.NOT_LEADER
    retriable = True

    def __init__(self, message: str, *, leader_id: int | None, leader_address: str = "") -> None:
        super().__init__(message)
        self.leader_id = leader_id
        self.leader_address = leader_address


def _error(name: str, code: int, retriable: bool = False) -> type[BrokerError]:
    return type(name, (BrokerError,), {"code": code, "retriable": retriable})


LeaderNotAvailableError = _error("LeaderNotAvailableError", pb.LEADER_NOT_AVAILABLE, True)
UnknownTopicError = _error("UnknownTopicError", pb.UNKNOWN_TOPIC_OR_PARTITION)
TopicExistsError = _error("TopicExistsError", pb.TOPIC_ALREADY_EXISTS)
InvalidTopicNameError = _error("InvalidTopicNameError", pb.INVALID_TOPIC_NAME)
InvalidPartitionsError = _error("InvalidPartitionsError", pb.INVALID_PARTITIONS)
InvalidReplicationFactorError = _error(
    "InvalidReplicationFactorError", pb.INVALID_REPLICATION_FACTOR
)
InvalidConfigError = _error("InvalidConfigError", pb.INVALID_CONFIG)
CorruptBatchRequestError = _error("CorruptBatchRequestError", pb.CORRUPT_BATCH)
InvalidBatchRequestError = _error("InvalidBatchRequestError", pb.INVALID_BATCH)
MessageTooLargeError = _error("MessageTooLargeError", pb.MESSAGE_TOO_LARGE)
OffsetOutOfRangeRequestError = _error("OffsetOutOfRangeRequestError", pb.OFFSET_OUT_OF_RANGE)
OutOfOrderSequenceError = _error("OutOfOrderSequenceError", pb.OUT_OF_ORDER_SEQUENCE)
ProducerFencedError = _error("ProducerFencedError", pb.PRODUCER_FENCED)
InvalidTimestampError = _error("InvalidTimestampError", pb.INVALID_TIMESTAMP)
RequestTimedOutError = _error("RequestTimedOutError", pb.REQUEST_TIMED_OUT, True)
DiskFullRequestError = _error("DiskFullRequestError", pb.DISK_FULL, True)
InvalidRequestError = _error("InvalidRequestError", pb.INVALID_REQUEST)
StorageRequestError = _error("StorageRequestError", pb.STORAGE_ERROR, True)
PolicyViolationError = _error("PolicyViolationError", pb.POLICY_VIOLATION)
# Queues (node/queues/): the queue's name is unknown, taken, a settlement's lock is gone, or a
# QueueConfig is invalid. LOCK_LOST is normally reported per settlement, not as a call's status.
QueueNotFoundError = _error("QueueNotFoundError", pb.QUEUE_NOT_FOUND)
QueueExistsError = _error("QueueExistsError", pb.QUEUE_ALREADY_EXISTS)
LockLostError = _error("LockLostError", pb.LOCK_LOST)
InvalidQueueConfigError = _error("InvalidQueueConfigError", pb.INVALID_QUEUE_CONFIG)
