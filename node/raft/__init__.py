"""Sans-I/O Raft core: events in (step, tick, propose, advance), one Ready out. See docs/raft.md."""

from tidelog.node.raft.config import RaftConfig
from tidelog.node.raft.core import RaftCore, Ready
from tidelog.node.raft.log import LogReader, LogStart, MemoryLog, RaftLog
from tidelog.node.raft.messages import Message, MessageType
from tidelog.node.raft.progress import ProgressState
from tidelog.node.raft.types import (
    NO_INDEX,
    ConfigChangeRejected,
    Entry,
    EntryKind,
    HardState,
    LogIndex,
    Membership,
    NodeId,
    NotLeader,
    ProposalDropped,
    RaftError,
    RemoteProtocolError,
    Role,
    SoftState,
    Term,
)

__all__ = [
    "NO_INDEX",
    "ConfigChangeRejected",
    "Entry",
    "EntryKind",
    "HardState",
    "LogIndex",
    "LogReader",
    "LogStart",
    "MemoryLog",
    "Membership",
    "Message",
    "MessageType",
    "NodeId",
    "NotLeader",
    "ProgressState",
    "ProposalDropped",
    "RaftConfig",
    "RaftCore",
    "RaftError",
    "RaftLog",
    "Ready",
    "RemoteProtocolError",
    "Role",
    "SoftState",
    "Term",
]
