from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EntryKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ENTRY_DATA: _ClassVar[EntryKind]
    ENTRY_NOOP: _ClassVar[EntryKind]
    ENTRY_CONFIG: _ClassVar[EntryKind]
ENTRY_DATA: EntryKind
ENTRY_NOOP: EntryKind
ENTRY_CONFIG: EntryKind

class RaftEntry(_message.Message):
    __slots__ = ("term", "index", "count", "kind", "data")
    TERM_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    term: int
    index: int
    count: int
    kind: EntryKind
    data: bytes
    def __init__(self, term: _Optional[int] = ..., index: _Optional[int] = ..., count: _Optional[int] = ..., kind: _Optional[_Union[EntryKind, str]] = ..., data: _Optional[bytes] = ...) -> None: ...

class Membership(_message.Message):
    __slots__ = ("voters", "learners", "index")
    VOTERS_FIELD_NUMBER: _ClassVar[int]
    LEARNERS_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    voters: _containers.RepeatedScalarFieldContainer[int]
    learners: _containers.RepeatedScalarFieldContainer[int]
    index: int
    def __init__(self, voters: _Optional[_Iterable[int]] = ..., learners: _Optional[_Iterable[int]] = ..., index: _Optional[int] = ...) -> None: ...

class RaftMessage(_message.Message):
    __slots__ = ("group", "type", "frm", "to", "term", "index", "log_term", "entries", "commit", "reject", "reject_hint", "transfer", "membership", "has_membership")
    GROUP_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    FRM_FIELD_NUMBER: _ClassVar[int]
    TO_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    LOG_TERM_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    REJECT_FIELD_NUMBER: _ClassVar[int]
    REJECT_HINT_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_FIELD_NUMBER: _ClassVar[int]
    MEMBERSHIP_FIELD_NUMBER: _ClassVar[int]
    HAS_MEMBERSHIP_FIELD_NUMBER: _ClassVar[int]
    group: str
    type: str
    frm: int
    to: int
    term: int
    index: int
    log_term: int
    entries: _containers.RepeatedCompositeFieldContainer[RaftEntry]
    commit: int
    reject: bool
    reject_hint: int
    transfer: bool
    membership: Membership
    has_membership: bool
    def __init__(self, group: _Optional[str] = ..., type: _Optional[str] = ..., frm: _Optional[int] = ..., to: _Optional[int] = ..., term: _Optional[int] = ..., index: _Optional[int] = ..., log_term: _Optional[int] = ..., entries: _Optional[_Iterable[_Union[RaftEntry, _Mapping]]] = ..., commit: _Optional[int] = ..., reject: _Optional[bool] = ..., reject_hint: _Optional[int] = ..., transfer: _Optional[bool] = ..., membership: _Optional[_Union[Membership, _Mapping]] = ..., has_membership: _Optional[bool] = ...) -> None: ...

class LeaderInfo(_message.Message):
    __slots__ = ("group", "leader_id", "term")
    GROUP_FIELD_NUMBER: _ClassVar[int]
    LEADER_ID_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    group: str
    leader_id: int
    term: int
    def __init__(self, group: _Optional[str] = ..., leader_id: _Optional[int] = ..., term: _Optional[int] = ...) -> None: ...

class RaftBatch(_message.Message):
    __slots__ = ("from_node", "messages", "leaders", "incarnation")
    FROM_NODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    LEADERS_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    from_node: int
    messages: _containers.RepeatedCompositeFieldContainer[RaftMessage]
    leaders: _containers.RepeatedCompositeFieldContainer[LeaderInfo]
    incarnation: int
    def __init__(self, from_node: _Optional[int] = ..., messages: _Optional[_Iterable[_Union[RaftMessage, _Mapping]]] = ..., leaders: _Optional[_Iterable[_Union[LeaderInfo, _Mapping]]] = ..., incarnation: _Optional[int] = ...) -> None: ...

class ExchangeSummary(_message.Message):
    __slots__ = ("batches",)
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    batches: int
    def __init__(self, batches: _Optional[int] = ...) -> None: ...

class ProposeMetadataRequest(_message.Message):
    __slots__ = ("command", "timeout_ms")
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    command: bytes
    timeout_ms: int
    def __init__(self, command: _Optional[bytes] = ..., timeout_ms: _Optional[int] = ...) -> None: ...

class ProposeMetadataResponse(_message.Message):
    __slots__ = ("result", "leader_id", "not_leader")
    RESULT_FIELD_NUMBER: _ClassVar[int]
    LEADER_ID_FIELD_NUMBER: _ClassVar[int]
    NOT_LEADER_FIELD_NUMBER: _ClassVar[int]
    result: bytes
    leader_id: int
    not_leader: bool
    def __init__(self, result: _Optional[bytes] = ..., leader_id: _Optional[int] = ..., not_leader: _Optional[bool] = ...) -> None: ...

class MetadataSnapshotRequest(_message.Message):
    __slots__ = ("min_index", "index", "offset")
    MIN_INDEX_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    min_index: int
    index: int
    offset: int
    def __init__(self, min_index: _Optional[int] = ..., index: _Optional[int] = ..., offset: _Optional[int] = ...) -> None: ...

class MetadataSnapshotChunk(_message.Message):
    __slots__ = ("data", "total_bytes", "index", "offset")
    DATA_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    total_bytes: int
    index: int
    offset: int
    def __init__(self, data: _Optional[bytes] = ..., total_bytes: _Optional[int] = ..., index: _Optional[int] = ..., offset: _Optional[int] = ...) -> None: ...
