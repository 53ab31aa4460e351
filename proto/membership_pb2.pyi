from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AddNodeRequest(_message.Message):
    __slots__ = ("node_id", "address", "peer_address", "metadata_voter", "timeout_ms")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PEER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    METADATA_VOTER_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    address: str
    peer_address: str
    metadata_voter: bool
    timeout_ms: int
    def __init__(self, node_id: _Optional[int] = ..., address: _Optional[str] = ..., peer_address: _Optional[str] = ..., metadata_voter: _Optional[bool] = ..., timeout_ms: _Optional[int] = ...) -> None: ...

class AddNodeResponse(_message.Message):
    __slots__ = ("state", "already", "peer_address")
    STATE_FIELD_NUMBER: _ClassVar[int]
    ALREADY_FIELD_NUMBER: _ClassVar[int]
    PEER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    state: str
    already: bool
    peer_address: str
    def __init__(self, state: _Optional[str] = ..., already: _Optional[bool] = ..., peer_address: _Optional[str] = ...) -> None: ...

class DecommissionNodeRequest(_message.Message):
    __slots__ = ("node_id", "force", "timeout_ms", "cancel")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    force: bool
    timeout_ms: int
    cancel: bool
    def __init__(self, node_id: _Optional[int] = ..., force: _Optional[bool] = ..., timeout_ms: _Optional[int] = ..., cancel: _Optional[bool] = ...) -> None: ...

class DecommissionNodeResponse(_message.Message):
    __slots__ = ("state", "already")
    STATE_FIELD_NUMBER: _ClassVar[int]
    ALREADY_FIELD_NUMBER: _ClassVar[int]
    state: str
    already: bool
    def __init__(self, state: _Optional[str] = ..., already: _Optional[bool] = ...) -> None: ...

class DescribeMembershipRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class MemberInfo(_message.Message):
    __slots__ = ("node_id", "address", "peer_address", "state", "metadata_role", "alive", "replicas", "leaderships", "metadata_voter_wanted")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PEER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    METADATA_ROLE_FIELD_NUMBER: _ClassVar[int]
    ALIVE_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    LEADERSHIPS_FIELD_NUMBER: _ClassVar[int]
    METADATA_VOTER_WANTED_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    address: str
    peer_address: str
    state: str
    metadata_role: str
    alive: bool
    replicas: int
    leaderships: int
    metadata_voter_wanted: bool
    def __init__(self, node_id: _Optional[int] = ..., address: _Optional[str] = ..., peer_address: _Optional[str] = ..., state: _Optional[str] = ..., metadata_role: _Optional[str] = ..., alive: _Optional[bool] = ..., replicas: _Optional[int] = ..., leaderships: _Optional[int] = ..., metadata_voter_wanted: _Optional[bool] = ...) -> None: ...

class DescribeMembershipResponse(_message.Message):
    __slots__ = ("members", "metadata_leader_id")
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    METADATA_LEADER_ID_FIELD_NUMBER: _ClassVar[int]
    members: _containers.RepeatedCompositeFieldContainer[MemberInfo]
    metadata_leader_id: int
    def __init__(self, members: _Optional[_Iterable[_Union[MemberInfo, _Mapping]]] = ..., metadata_leader_id: _Optional[int] = ...) -> None: ...

class JoinRequest(_message.Message):
    __slots__ = ("node_id", "address", "cluster_id")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    address: str
    cluster_id: str
    def __init__(self, node_id: _Optional[int] = ..., address: _Optional[str] = ..., cluster_id: _Optional[str] = ...) -> None: ...

class JoinPeer(_message.Message):
    __slots__ = ("node_id", "address", "peer_address")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PEER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    address: str
    peer_address: str
    def __init__(self, node_id: _Optional[int] = ..., address: _Optional[str] = ..., peer_address: _Optional[str] = ...) -> None: ...

class JoinResponse(_message.Message):
    __slots__ = ("cluster_id", "peers", "metadata_voters", "metadata_learners", "membership_index")
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    PEERS_FIELD_NUMBER: _ClassVar[int]
    METADATA_VOTERS_FIELD_NUMBER: _ClassVar[int]
    METADATA_LEARNERS_FIELD_NUMBER: _ClassVar[int]
    MEMBERSHIP_INDEX_FIELD_NUMBER: _ClassVar[int]
    cluster_id: str
    peers: _containers.RepeatedCompositeFieldContainer[JoinPeer]
    metadata_voters: _containers.RepeatedScalarFieldContainer[int]
    metadata_learners: _containers.RepeatedScalarFieldContainer[int]
    membership_index: int
    def __init__(self, cluster_id: _Optional[str] = ..., peers: _Optional[_Iterable[_Union[JoinPeer, _Mapping]]] = ..., metadata_voters: _Optional[_Iterable[int]] = ..., metadata_learners: _Optional[_Iterable[int]] = ..., membership_index: _Optional[int] = ...) -> None: ...
