"""The node's log output: `tidelog node --log-format text|json` (env TIDELOG_LOG_FORMAT).

``text`` (the default) is for people: ``<time> node-<id> <LEVEL> <logger>: <message>``.
``json`` is for log shippers (Vector, Fluent Bit, Loki's promtail, Elastic's Filebeat): one JSON
object per line, always one line (json.dumps escapes the newlines of a traceback), with the keys

    ts      RFC 3339 time in UTC with milliseconds, e.g. "2026-12-01T18:30:00.123Z"
    level   DEBUG, INFO, WARNING, ERROR or CRITICAL
    logger  the Python logger, e.g. "tidelog.node.replica_manager"
    node    this node's id (an integer)
    msg     the message, formatted
    exc     the traceback, only when the line carries an exception

Python warnings and exceptions that escape a thread or the main thread go through the same
formatter in json mode, so that a shipper never sees a line it cannot parse. Only the standard
library: a shipper's parser needs no Tidelog code.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from datetime import UTC, datetime
from enum import Enum
from types import TracebackType

__all__ = ["LogFormat", "JsonFormatter", "configure_logging", "text_formatter"]


class LogFormat(Enum):
    TEXT = "text"
    JSON = "json"


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module docstring for the keys)."""

    def __init__(self, node_id: int) -> None:
        super().__init__()
        self._node_id = node_id

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": rfc3339_utc(record.created),
            "level": record.levelname,
            "logger": record.name,
            "node": self._node_id,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def text_formatter(node_id: int) -> logging.Formatter:
    return logging.Formatter(f"%(asctime)s node-{node_id} %(levelname)s %(name)s: %(message)s")


def rfc3339_utc(created_s: float) -> str:
    stamp = datetime.fromtimestamp(created_s, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


def configure_logging(*, node_id: int, level: str, log_format: LogFormat | str) -> None:
    """Send every log record to stderr in `log_format`, replacing any earlier handlers."""
    log_format = LogFormat(log_format)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(node_id) if log_format is LogFormat.JSON
                         else text_formatter(node_id))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    if log_format is LogFormat.JSON:
        logging.captureWarnings(True)  # warnings.warn() would print plain text to stderr
        sys.excepthook = _log_uncaught
        threading.excepthook = _log_thread_exception


_uncaught = logging.getLogger("tidelog.node.uncaught")


def _log_uncaught(kind: type[BaseException], exc: BaseException,
                  tb: TracebackType | None) -> None:
    _uncaught.critical("uncaught %s: %s", kind.__name__, exc, exc_info=(kind, exc, tb))


def _log_thread_exception(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    _uncaught.error("exception in thread %s: %s", name, args.exc_value,
                    exc_info=(args.exc_type, args.exc_value, args.exc_traceback))  # type: ignore[arg-type]
