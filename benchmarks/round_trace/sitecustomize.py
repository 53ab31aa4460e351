"""Per-round timestamps of the Raft path, for benchmarks only (never shipped, never in tests).

Put this directory on a node's PYTHONPATH and set TIDELOG_ROUND_TRACE=/tmp/trace; each node then
appends one line per event to /tmp/trace.<pid>: ``<CLOCK_MONOTONIC µs> <event> <fields...>``.
Events: P (a leader proposes: group, last offset), H0/H1 (a Ready is taken — by the drive task
or at once by step/propose — : group, role, entries, last entry, commit index, messages / its
handling ends: group, commit), S0/S1 (the fsync of a Ready is asked for / done, on the loop),
T0/T1/T2 (inside the group-commit job: start, log fsynced, marker written), SEND (group, type,
to, index, entries), RB (a batch from a peer: from, group:type:index of each message), AC (a
leader answers writes while stepping: group, commit).
`benchmarks/round_trace_report.py` turns the files into the phase table of benchmarks/README.md.
The hooks wrap private methods of node/replica.py and node/transport.py: update them with those.
"""

from __future__ import annotations

import os
import threading
import time

_PREFIX = os.environ.get("TIDELOG_ROUND_TRACE")


def _install(prefix: str) -> None:
    import tidelog.node.replica as replica_mod
    import tidelog.node.replica_manager as manager_mod
    import tidelog.node.transport as transport_mod

    out = open(f"{prefix}.{os.getpid()}", "w", buffering=1 << 16)  # noqa: SIM115 - process-long

    def emit(*fields: object, at_us: int | None = None) -> None:
        at_us = time.monotonic_ns() // 1000 if at_us is None else at_us
        out.write(f"{at_us} " + " ".join(map(str, fields)) + "\n")

    def flusher() -> None:
        while True:
            time.sleep(0.5)
            out.flush()

    threading.Thread(target=flusher, daemon=True, name="round-trace").start()
    replica_cls = replica_mod.Replica

    propose = replica_cls.propose

    def traced_propose(self, batches):  # type: ignore[no-untyped-def]
        started_us = time.monotonic_ns() // 1000  # propose may take its Ready itself
        offsets = propose(self, batches)
        emit("P", self.group, offsets[-1][1], at_us=started_us)
        return offsets

    handle = replica_cls._handle_until_done
    core_cls = replica_mod.RaftCore
    ready = core_cls.ready

    def traced_ready(self):  # type: ignore[no-untyped-def]
        rd = ready(self)
        group = groups.get(id(self))
        if rd is not None and group is not None:
            emit("H0", group, self.role.value, len(rd.entries),
                 rd.entries[-1].last if rd.entries else -1, rd.commit_index, len(rd.messages))
        return rd

    groups: dict[int, str] = {}
    init = replica_cls.__init__

    def traced_init(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        init(self, *args, **kwargs)
        groups[id(self.core)] = self.group

    async def traced_handle(self, rd, started=None):  # type: ignore[no-untyped-def]
        await handle(self, rd, started)
        emit("H1", self.group, rd.commit_index)

    sync_step = replica_cls._sync_log_and_marker

    def traced_sync_step(self, rd):  # type: ignore[no-untyped-def]
        emit("S0", self.group)
        future = sync_step(self, rd)
        group = self.group
        future.add_done_callback(lambda _f: emit("S1", group))  # on the loop, as the waiter
        return future

    answer = getattr(replica_cls, "_answer_committed", None)

    def traced_answer(self):  # type: ignore[no-untyped-def]
        emit("AC", self.group, int(self.core.commit))
        answer(self)

    job_sync = replica_mod._LogAndMarker.sync

    def traced_job_sync(self):  # type: ignore[no-untyped-def]
        emit("T0", self.log.directory.name)
        end = job_sync(self)
        emit("T2", self.log.directory.name)
        return end

    marker_write = replica_mod.DurableMarker.write

    def traced_marker_write(self, **fields):  # type: ignore[no-untyped-def]
        emit("T1", self._path.parent.name)  # the log's fsync is done when the marker is written
        marker_write(self, **fields)

    send = transport_mod.PeerLink.send

    def traced_send(self, message):  # type: ignore[no-untyped-def]
        emit("SEND", message.group, message.type, message.to, message.index, len(message.entries))
        send(self, message)

    receive = manager_mod.ReplicaManager.receive_raft

    def traced_receive(self, batch):  # type: ignore[no-untyped-def]
        emit("RB", batch.from_node,
             " ".join(f"{w.group}:{w.type}:{w.index}" for w in batch.messages))
        receive(self, batch)

    replica_cls.propose = traced_propose
    replica_cls._handle_until_done = traced_handle
    replica_cls.__init__ = traced_init
    core_cls.ready = traced_ready
    replica_cls._sync_log_and_marker = traced_sync_step
    if answer is not None:
        replica_cls._answer_committed = traced_answer
    replica_mod._LogAndMarker.sync = traced_job_sync
    replica_mod.DurableMarker.write = traced_marker_write
    transport_mod.PeerLink.send = traced_send
    manager_mod.ReplicaManager.receive_raft = traced_receive


if _PREFIX:
    _install(_PREFIX)
