from tidelog.proto import broker_pb2 as _broker_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SettleAction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACK: _ClassVar[SettleAction]
    NACK: _ClassVar[SettleAction]
    REJECT: _ClassVar[SettleAction]
    RELEASE: _ClassVar[SettleAction]
    EXTEND: _ClassVar[SettleAction]
ACK: SettleAction
NACK: SettleAction
REJECT: SettleAction
RELEASE: SettleAction
EXTEND: SettleAction

class FindQueueCoordinatorRequest(_message.Message):
    __slots__ = ("queue",)
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    queue: str
    def __init__(self, queue: _Optional[str] = ...) -> None: ...

class QueueConfig(_message.Message):
    __slots__ = ("name", "topics", "key_ordered", "max_deliveries", "lock_ms", "backoff_initial_ms", "backoff_max_ms", "backoff_multiplier", "dead_letter_topic", "delay_ms", "ttl_ms", "max_in_flight", "start", "dedup_window_ms")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TOPICS_FIELD_NUMBER: _ClassVar[int]
    KEY_ORDERED_FIELD_NUMBER: _ClassVar[int]
    MAX_DELIVERIES_FIELD_NUMBER: _ClassVar[int]
    LOCK_MS_FIELD_NUMBER: _ClassVar[int]
    BACKOFF_INITIAL_MS_FIELD_NUMBER: _ClassVar[int]
    BACKOFF_MAX_MS_FIELD_NUMBER: _ClassVar[int]
    BACKOFF_MULTIPLIER_FIELD_NUMBER: _ClassVar[int]
    DEAD_LETTER_TOPIC_FIELD_NUMBER: _ClassVar[int]
    DELAY_MS_FIELD_NUMBER: _ClassVar[int]
    TTL_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    DEDUP_WINDOW_MS_FIELD_NUMBER: _ClassVar[int]
    name: str
    topics: _containers.RepeatedScalarFieldContainer[str]
    key_ordered: bool
    max_deliveries: int
    lock_ms: int
    backoff_initial_ms: int
    backoff_max_ms: int
    backoff_multiplier: float
    dead_letter_topic: str
    delay_ms: int
    ttl_ms: int
    max_in_flight: int
    start: str
    dedup_window_ms: int
    def __init__(self, name: _Optional[str] = ..., topics: _Optional[_Iterable[str]] = ..., key_ordered: _Optional[bool] = ..., max_deliveries: _Optional[int] = ..., lock_ms: _Optional[int] = ..., backoff_initial_ms: _Optional[int] = ..., backoff_max_ms: _Optional[int] = ..., backoff_multiplier: _Optional[float] = ..., dead_letter_topic: _Optional[str] = ..., delay_ms: _Optional[int] = ..., ttl_ms: _Optional[int] = ..., max_in_flight: _Optional[int] = ..., start: _Optional[str] = ..., dedup_window_ms: _Optional[int] = ...) -> None: ...

class CreateQueueRequest(_message.Message):
    __slots__ = ("config", "if_not_exists", "timeout_ms")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    IF_NOT_EXISTS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    config: QueueConfig
    if_not_exists: bool
    timeout_ms: int
    def __init__(self, config: _Optional[_Union[QueueConfig, _Mapping]] = ..., if_not_exists: _Optional[bool] = ..., timeout_ms: _Optional[int] = ...) -> None: ...

class CreateQueueResponse(_message.Message):
    __slots__ = ("config",)
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    config: QueueConfig
    def __init__(self, config: _Optional[_Union[QueueConfig, _Mapping]] = ...) -> None: ...

class AlterQueueRequest(_message.Message):
    __slots__ = ("queue", "set")
    class SetEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    SET_FIELD_NUMBER: _ClassVar[int]
    queue: str
    set: _containers.ScalarMap[str, str]
    def __init__(self, queue: _Optional[str] = ..., set: _Optional[_Mapping[str, str]] = ...) -> None: ...

class AlterQueueResponse(_message.Message):
    __slots__ = ("config",)
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    config: QueueConfig
    def __init__(self, config: _Optional[_Union[QueueConfig, _Mapping]] = ...) -> None: ...

class DeleteQueueRequest(_message.Message):
    __slots__ = ("queue", "delete_dead_letter_topic")
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    DELETE_DEAD_LETTER_TOPIC_FIELD_NUMBER: _ClassVar[int]
    queue: str
    delete_dead_letter_topic: bool
    def __init__(self, queue: _Optional[str] = ..., delete_dead_letter_topic: _Optional[bool] = ...) -> None: ...

class DeleteQueueResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListQueuesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListedQueue(_message.Message):
    __slots__ = ("name", "topics", "key_ordered", "coordinator_id", "depth", "in_flight")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TOPICS_FIELD_NUMBER: _ClassVar[int]
    KEY_ORDERED_FIELD_NUMBER: _ClassVar[int]
    COORDINATOR_ID_FIELD_NUMBER: _ClassVar[int]
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    name: str
    topics: _containers.RepeatedScalarFieldContainer[str]
    key_ordered: bool
    coordinator_id: int
    depth: int
    in_flight: int
    def __init__(self, name: _Optional[str] = ..., topics: _Optional[_Iterable[str]] = ..., key_ordered: _Optional[bool] = ..., coordinator_id: _Optional[int] = ..., depth: _Optional[int] = ..., in_flight: _Optional[int] = ...) -> None: ...

class ListQueuesResponse(_message.Message):
    __slots__ = ("queues",)
    QUEUES_FIELD_NUMBER: _ClassVar[int]
    queues: _containers.RepeatedCompositeFieldContainer[ListedQueue]
    def __init__(self, queues: _Optional[_Iterable[_Union[ListedQueue, _Mapping]]] = ...) -> None: ...

class DescribeQueueRequest(_message.Message):
    __slots__ = ("queue",)
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    queue: str
    def __init__(self, queue: _Optional[str] = ...) -> None: ...

class QueuePartitionStats(_message.Message):
    __slots__ = ("topic", "partition", "start_offset", "read_offset", "high_watermark", "depth", "in_flight", "waiting", "dead_letter_pending")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    START_OFFSET_FIELD_NUMBER: _ClassVar[int]
    READ_OFFSET_FIELD_NUMBER: _ClassVar[int]
    HIGH_WATERMARK_FIELD_NUMBER: _ClassVar[int]
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    WAITING_FIELD_NUMBER: _ClassVar[int]
    DEAD_LETTER_PENDING_FIELD_NUMBER: _ClassVar[int]
    topic: str
    partition: int
    start_offset: int
    read_offset: int
    high_watermark: int
    depth: int
    in_flight: int
    waiting: int
    dead_letter_pending: int
    def __init__(self, topic: _Optional[str] = ..., partition: _Optional[int] = ..., start_offset: _Optional[int] = ..., read_offset: _Optional[int] = ..., high_watermark: _Optional[int] = ..., depth: _Optional[int] = ..., in_flight: _Optional[int] = ..., waiting: _Optional[int] = ..., dead_letter_pending: _Optional[int] = ...) -> None: ...

class QueueStats(_message.Message):
    __slots__ = ("depth", "in_flight", "oldest_unacked_age_ms", "acked_total", "delivered_total", "redelivered_total", "dead_lettered_total", "expired_total", "dlq_depth", "redriven_total", "consumers", "partitions", "now_ms", "deduplicated_total", "dead_letters_lost_total")
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    OLDEST_UNACKED_AGE_MS_FIELD_NUMBER: _ClassVar[int]
    ACKED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    DELIVERED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    REDELIVERED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    DEAD_LETTERED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    EXPIRED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    DLQ_DEPTH_FIELD_NUMBER: _ClassVar[int]
    REDRIVEN_TOTAL_FIELD_NUMBER: _ClassVar[int]
    CONSUMERS_FIELD_NUMBER: _ClassVar[int]
    PARTITIONS_FIELD_NUMBER: _ClassVar[int]
    NOW_MS_FIELD_NUMBER: _ClassVar[int]
    DEDUPLICATED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    DEAD_LETTERS_LOST_TOTAL_FIELD_NUMBER: _ClassVar[int]
    depth: int
    in_flight: int
    oldest_unacked_age_ms: int
    acked_total: int
    delivered_total: int
    redelivered_total: int
    dead_lettered_total: int
    expired_total: int
    dlq_depth: int
    redriven_total: int
    consumers: int
    partitions: _containers.RepeatedCompositeFieldContainer[QueuePartitionStats]
    now_ms: int
    deduplicated_total: int
    dead_letters_lost_total: int
    def __init__(self, depth: _Optional[int] = ..., in_flight: _Optional[int] = ..., oldest_unacked_age_ms: _Optional[int] = ..., acked_total: _Optional[int] = ..., delivered_total: _Optional[int] = ..., redelivered_total: _Optional[int] = ..., dead_lettered_total: _Optional[int] = ..., expired_total: _Optional[int] = ..., dlq_depth: _Optional[int] = ..., redriven_total: _Optional[int] = ..., consumers: _Optional[int] = ..., partitions: _Optional[_Iterable[_Union[QueuePartitionStats, _Mapping]]] = ..., now_ms: _Optional[int] = ..., deduplicated_total: _Optional[int] = ..., dead_letters_lost_total: _Optional[int] = ...) -> None: ...

class DescribeQueueResponse(_message.Message):
    __slots__ = ("config", "stats", "coordinator_id")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    COORDINATOR_ID_FIELD_NUMBER: _ClassVar[int]
    config: QueueConfig
    stats: QueueStats
    coordinator_id: int
    def __init__(self, config: _Optional[_Union[QueueConfig, _Mapping]] = ..., stats: _Optional[_Union[QueueStats, _Mapping]] = ..., coordinator_id: _Optional[int] = ...) -> None: ...

class ReceiveRequest(_message.Message):
    __slots__ = ("queue", "consumer_id", "max_messages", "max_wait_ms", "max_bytes")
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    CONSUMER_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGES_FIELD_NUMBER: _ClassVar[int]
    MAX_WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    queue: str
    consumer_id: str
    max_messages: int
    max_wait_ms: int
    max_bytes: int
    def __init__(self, queue: _Optional[str] = ..., consumer_id: _Optional[str] = ..., max_messages: _Optional[int] = ..., max_wait_ms: _Optional[int] = ..., max_bytes: _Optional[int] = ...) -> None: ...

class AcquiredRange(_message.Message):
    __slots__ = ("first_offset", "last_offset", "delivery_count")
    FIRST_OFFSET_FIELD_NUMBER: _ClassVar[int]
    LAST_OFFSET_FIELD_NUMBER: _ClassVar[int]
    DELIVERY_COUNT_FIELD_NUMBER: _ClassVar[int]
    first_offset: int
    last_offset: int
    delivery_count: int
    def __init__(self, first_offset: _Optional[int] = ..., last_offset: _Optional[int] = ..., delivery_count: _Optional[int] = ...) -> None: ...

class ReceivedPartition(_message.Message):
    __slots__ = ("topic", "partition", "batches", "acquired", "lock_deadline_ms")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    ACQUIRED_FIELD_NUMBER: _ClassVar[int]
    LOCK_DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    topic: str
    partition: int
    batches: bytes
    acquired: _containers.RepeatedCompositeFieldContainer[AcquiredRange]
    lock_deadline_ms: int
    def __init__(self, topic: _Optional[str] = ..., partition: _Optional[int] = ..., batches: _Optional[bytes] = ..., acquired: _Optional[_Iterable[_Union[AcquiredRange, _Mapping]]] = ..., lock_deadline_ms: _Optional[int] = ...) -> None: ...

class ReceiveResponse(_message.Message):
    __slots__ = ("partitions",)
    PARTITIONS_FIELD_NUMBER: _ClassVar[int]
    partitions: _containers.RepeatedCompositeFieldContainer[ReceivedPartition]
    def __init__(self, partitions: _Optional[_Iterable[_Union[ReceivedPartition, _Mapping]]] = ...) -> None: ...

class Settlement(_message.Message):
    __slots__ = ("topic", "partition", "first_offset", "last_offset", "delivery_count", "action", "delay_ms", "reason", "extend_ms")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    FIRST_OFFSET_FIELD_NUMBER: _ClassVar[int]
    LAST_OFFSET_FIELD_NUMBER: _ClassVar[int]
    DELIVERY_COUNT_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    DELAY_MS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    EXTEND_MS_FIELD_NUMBER: _ClassVar[int]
    topic: str
    partition: int
    first_offset: int
    last_offset: int
    delivery_count: int
    action: SettleAction
    delay_ms: int
    reason: str
    extend_ms: int
    def __init__(self, topic: _Optional[str] = ..., partition: _Optional[int] = ..., first_offset: _Optional[int] = ..., last_offset: _Optional[int] = ..., delivery_count: _Optional[int] = ..., action: _Optional[_Union[SettleAction, str]] = ..., delay_ms: _Optional[int] = ..., reason: _Optional[str] = ..., extend_ms: _Optional[int] = ...) -> None: ...

class SettleRequest(_message.Message):
    __slots__ = ("queue", "consumer_id", "settlements", "timeout_ms")
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    CONSUMER_ID_FIELD_NUMBER: _ClassVar[int]
    SETTLEMENTS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    queue: str
    consumer_id: str
    settlements: _containers.RepeatedCompositeFieldContainer[Settlement]
    timeout_ms: int
    def __init__(self, queue: _Optional[str] = ..., consumer_id: _Optional[str] = ..., settlements: _Optional[_Iterable[_Union[Settlement, _Mapping]]] = ..., timeout_ms: _Optional[int] = ...) -> None: ...

class SettleResult(_message.Message):
    __slots__ = ("index", "error", "error_message", "lock_deadline_ms")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    LOCK_DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    index: int
    error: _broker_pb2.ErrorCode
    error_message: str
    lock_deadline_ms: int
    def __init__(self, index: _Optional[int] = ..., error: _Optional[_Union[_broker_pb2.ErrorCode, str]] = ..., error_message: _Optional[str] = ..., lock_deadline_ms: _Optional[int] = ...) -> None: ...

class SettleResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[SettleResult]
    def __init__(self, results: _Optional[_Iterable[_Union[SettleResult, _Mapping]]] = ...) -> None: ...

class PeekRequest(_message.Message):
    __slots__ = ("queue", "max_messages")
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGES_FIELD_NUMBER: _ClassVar[int]
    queue: str
    max_messages: int
    def __init__(self, queue: _Optional[str] = ..., max_messages: _Optional[int] = ...) -> None: ...

class PeekedPartition(_message.Message):
    __slots__ = ("topic", "partition", "batches", "available")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    topic: str
    partition: int
    batches: bytes
    available: _containers.RepeatedCompositeFieldContainer[AcquiredRange]
    def __init__(self, topic: _Optional[str] = ..., partition: _Optional[int] = ..., batches: _Optional[bytes] = ..., available: _Optional[_Iterable[_Union[AcquiredRange, _Mapping]]] = ...) -> None: ...

class PeekResponse(_message.Message):
    __slots__ = ("partitions",)
    PARTITIONS_FIELD_NUMBER: _ClassVar[int]
    partitions: _containers.RepeatedCompositeFieldContainer[PeekedPartition]
    def __init__(self, partitions: _Optional[_Iterable[_Union[PeekedPartition, _Mapping]]] = ...) -> None: ...

class PurgeRequest(_message.Message):
    __slots__ = ("queue",)
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    queue: str
    def __init__(self, queue: _Optional[str] = ...) -> None: ...

class PurgeResponse(_message.Message):
    __slots__ = ("purged",)
    PURGED_FIELD_NUMBER: _ClassVar[int]
    purged: int
    def __init__(self, purged: _Optional[int] = ...) -> None: ...

class RedriveRequest(_message.Message):
    __slots__ = ("queue", "dlq_partition", "from_offset", "to_offset", "max_messages")
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    DLQ_PARTITION_FIELD_NUMBER: _ClassVar[int]
    FROM_OFFSET_FIELD_NUMBER: _ClassVar[int]
    TO_OFFSET_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGES_FIELD_NUMBER: _ClassVar[int]
    queue: str
    dlq_partition: int
    from_offset: int
    to_offset: int
    max_messages: int
    def __init__(self, queue: _Optional[str] = ..., dlq_partition: _Optional[int] = ..., from_offset: _Optional[int] = ..., to_offset: _Optional[int] = ..., max_messages: _Optional[int] = ...) -> None: ...

class RedriveResponse(_message.Message):
    __slots__ = ("redriven",)
    REDRIVEN_FIELD_NUMBER: _ClassVar[int]
    redriven: int
    def __init__(self, redriven: _Optional[int] = ...) -> None: ...
