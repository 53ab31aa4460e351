"""After the final read: every replica's committed prefix, digested offline, for the checker.

Theory of operation. Raft promises more than "no acknowledged record is lost": every replica of a
partition holds the same entries up to the commit index (log matching + state machine safety),
and Tidelog stores an entry as the same bytes on every replica (issue 11, defect 10). Reads
through the leader cannot see a follower that diverged, so once the final read is done the
harness stops the nodes, copies each replica's partition directory (a node's data dir is never
opened in place: opening a log runs recovery, which may write), and digests each copy's bytes
over `[0, upto)`, where `upto` is the *common committed offset*: the lowest of what each replica
itself recorded as committed (`raft.state`, `raft.durable`) and of the high watermark the final
read saw. Every offset below
it is committed on every replica, so their bytes must be identical; a lagging replica only
lowers `upto`, it never makes a false mismatch. The metadata log (`<data dir>/metadata`, a Raft
log on every node) is compared the same way, below every node's recorded commit, as partition
`METADATA_PARTITION` (-1). Each replica becomes one `replica_digest` event in the history, and
the checker's `replica-consistency` check judges them.

A replica that cannot be judged is recorded with `digest=None` and the reason (no directory, a
log that does not open, a log that ends below what the replica itself recorded as committed):
the checker fails on it rather than passing it by.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from tidelog.chaos.history import METADATA_PARTITION, ReplicaDigest
from tidelog.node.replica_state import DURABLE_FILE, DurableMarker, read_state
from tidelog.node.storage import LogConfig, PartitionLog, StorageError
from tidelog.node.storage.digest import committed_prefix_digest

__all__ = ["digest_replicas", "partition_dir"]


def partition_dir(data_dir: Path, topic: str, partition: int) -> Path | None:
    """The partition's directory in a node's data dir (`partitions/<topic>-<p>.<topic id>`, the
    newest topic id if the topic was ever recreated), or None."""
    root = data_dir / "partitions"
    prefix = f"{topic}-{partition}."
    if not root.is_dir():
        return None
    found = [d for d in root.iterdir()
             if d.is_dir() and d.name.startswith(prefix) and d.name[len(prefix):].isdigit()]
    return max(found, key=lambda d: int(d.name[len(prefix):]), default=None)


def digest_replicas(data_dirs: Mapping[str, Path], topic: str,
                    high_watermarks: Mapping[int, int], replicas: Mapping[int, Sequence[str]],
                    *, scratch: Path, time_ms: float) -> list[ReplicaDigest]:
    """One event per replica of each partition in `high_watermarks` (the final read's).

    `data_dirs`: node -> its data directory, with the node stopped. `replicas`: partition ->
    the nodes that should hold it (when a partition is missing, every node with a directory for
    it). `scratch` receives the copies and is removed afterwards."""
    events: list[ReplicaDigest] = []
    try:
        for partition, hw in sorted(high_watermarks.items()):
            def replica_dir(data_dir: Path, p: int = partition) -> Path | None:
                return partition_dir(data_dir, topic, p)

            nodes = list(replicas.get(partition) or
                         [n for n, d in sorted(data_dirs.items()) if replica_dir(d) is not None])
            events += _digest_group(data_dirs, replica_dir, partition, hw, nodes,
                                    scratch / f"p{partition}", time_ms)
        # The metadata log: a Raft log on every node, whose bytes must agree just the same.
        events += _digest_group(data_dirs, _metadata_dir, METADATA_PARTITION, None,
                                sorted(data_dirs), scratch / "metadata", time_ms)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return events


def _metadata_dir(data_dir: Path) -> Path | None:
    directory = data_dir / "metadata"
    return directory if directory.is_dir() else None


def _digest_group(data_dirs: Mapping[str, Path], replica_dir: Callable[[Path], Path | None],
                  partition: int, hw: int | None, nodes: Sequence[str], scratch: Path,
                  time_ms: float) -> list[ReplicaDigest]:
    """One Raft group's replicas over their common committed prefix: below every replica's
    recorded commit and, for a partition, below the final read's high watermark `hw`."""
    def unreadable(node: str, why: str) -> ReplicaDigest:
        return ReplicaDigest(partition=partition, node=node, upto_offset=0, digest=None,
                             detail=why, time_ms=time_ms)

    events: list[ReplicaDigest] = []
    opened: dict[str, tuple[PartitionLog, int]] = {}  # node -> (log, its committed end)
    try:
        for node in nodes:
            src = replica_dir(data_dirs[node]) if node in data_dirs else None
            if src is None:
                events.append(unreadable(node, "no directory for it"))
                continue
            copy = scratch / node
            shutil.copytree(src, copy)
            try:
                committed_end = _commit_hint(copy) + 1
                log = PartitionLog.open(copy, LogConfig())
            except (StorageError, OSError, ValueError, KeyError) as exc:
                events.append(unreadable(node, f"cannot open the log: {exc!r}"))
                continue
            log_end = log.log_end_offset
            if log_end < committed_end:
                log.close()
                events.append(unreadable(
                    node, f"recorded offsets below {committed_end} as committed, but its log "
                          f"ends at {log_end}"))
                continue
            opened[node] = (log, committed_end)
        ends = [end for _, end in opened.values()]
        upto = min([*ends, hw] if hw is not None else ends or [0])
        bound = f"of high watermark {hw}" if hw is not None else "(the metadata log)"
        # Log starts differ where a replica cut its prefix on its own (retention; the metadata
        # log below each node's own snapshot): compare from the largest.
        start = max((log.log_start_offset for log, _ in opened.values()), default=0)
        for node, (log, committed_end) in opened.items():
            try:
                digest = _digest(log, upto, start)
            except StorageError as exc:  # damaged stored bytes: refused, never hashed
                events.append(unreadable(node, f"cannot read [0,{upto}): {exc!r}"))
                continue
            detail = (f"committed prefix [0,{upto}) {bound}; this replica recorded "
                      f"[0,{committed_end}) as committed")
            events.append(ReplicaDigest(partition=partition, node=node, upto_offset=upto,
                                        digest=digest, detail=detail, time_ms=time_ms))
    finally:
        for log, _ in opened.values():
            log.close()
    return events


def _digest(log: PartitionLog, upto: int, start: int = 0) -> str:
    """Digest of the batches in `[start, upto)` (`committed_prefix_digest` takes the last
    offset)."""
    return committed_prefix_digest(log, upto - 1, from_offset=start)


def _commit_hint(directory: Path) -> int:
    """The highest offset this replica recorded as committed (-1: none): the newer of the commit
    in `raft.state` and the one in the durable marker `raft.durable` (written after every log
    fsync). A lower bound of the commit index it had, and by Raft every entry up to it matches
    the leader's."""
    commit = read_state(directory).commit
    if (directory / DURABLE_FILE).exists():
        marker = DurableMarker(directory)
        try:
            if marker.last is not None:
                commit = max(commit, marker.last.commit)
        finally:
            marker.close()
    return commit
