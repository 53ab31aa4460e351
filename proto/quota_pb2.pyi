from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class QuotaEntity(_message.Message):
    __slots__ = ("user", "user_default", "client_id", "client_id_default")
    USER_FIELD_NUMBER: _ClassVar[int]
    USER_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    user: str
    user_default: bool
    client_id: str
    client_id_default: bool
    def __init__(self, user: _Optional[str] = ..., user_default: _Optional[bool] = ..., client_id: _Optional[str] = ..., client_id_default: _Optional[bool] = ...) -> None: ...

class SetQuotaRequest(_message.Message):
    __slots__ = ("entity", "limits", "timeout_ms")
    class LimitsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    ENTITY_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    entity: QuotaEntity
    limits: _containers.ScalarMap[str, int]
    timeout_ms: int
    def __init__(self, entity: _Optional[_Union[QuotaEntity, _Mapping]] = ..., limits: _Optional[_Mapping[str, int]] = ..., timeout_ms: _Optional[int] = ...) -> None: ...

class SetQuotaResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RemoveQuotaRequest(_message.Message):
    __slots__ = ("entity", "kinds", "timeout_ms")
    ENTITY_FIELD_NUMBER: _ClassVar[int]
    KINDS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    entity: QuotaEntity
    kinds: _containers.RepeatedScalarFieldContainer[str]
    timeout_ms: int
    def __init__(self, entity: _Optional[_Union[QuotaEntity, _Mapping]] = ..., kinds: _Optional[_Iterable[str]] = ..., timeout_ms: _Optional[int] = ...) -> None: ...

class RemoveQuotaResponse(_message.Message):
    __slots__ = ("removed",)
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    removed: int
    def __init__(self, removed: _Optional[int] = ...) -> None: ...

class DescribeQuotasRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class QuotaEntry(_message.Message):
    __slots__ = ("entity", "limits")
    class LimitsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    ENTITY_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    entity: QuotaEntity
    limits: _containers.ScalarMap[str, int]
    def __init__(self, entity: _Optional[_Union[QuotaEntity, _Mapping]] = ..., limits: _Optional[_Mapping[str, int]] = ...) -> None: ...

class DescribeQuotasResponse(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[QuotaEntry]
    def __init__(self, entries: _Optional[_Iterable[_Union[QuotaEntry, _Mapping]]] = ...) -> None: ...
