"""The chaos harness: real faults against real nodes, and a checker for acknowledged-message loss.

Public API (everything else is private): the history model and value codec, the checker and its
results, the report writer. The fault injectors are modules of their own, imported explicitly
because they need root and Linux tools: `tidelog.chaos.netns` (network namespaces, iptables, tc)
and `tidelog.chaos.process` (node process supervisor).
"""

from tidelog.chaos.checker import Checker, CheckerConfig, check_history
from tidelog.chaos.history import (
    ConsumerRead,
    CorruptValue,
    DecodedValue,
    Event,
    EventKind,
    FaultStart,
    FaultStop,
    FinalRead,
    FinalRecord,
    GroupCommit,
    History,
    HistoryWriter,
    LeaderObserved,
    SendFailed,
    SendIndeterminate,
    SendInvoked,
    SendOk,
    decode_value,
    encode_value,
)
from tidelog.chaos.index import MalformedHistory
from tidelog.chaos.results import CheckName, CheckResult, Results, Verdict, render_summary

__all__ = [
    "CheckName",
    "CheckResult",
    "Checker",
    "CheckerConfig",
    "ConsumerRead",
    "CorruptValue",
    "DecodedValue",
    "Event",
    "EventKind",
    "FaultStart",
    "FaultStop",
    "FinalRead",
    "FinalRecord",
    "GroupCommit",
    "History",
    "HistoryWriter",
    "LeaderObserved",
    "MalformedHistory",
    "Results",
    "SendFailed",
    "SendIndeterminate",
    "SendInvoked",
    "SendOk",
    "Verdict",
    "check_history",
    "decode_value",
    "encode_value",
    "render_summary",
]
