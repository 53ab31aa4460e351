"""Queue benchmark: receive + ack throughput and ack latency on one partition, side by side with
RabbitMQ's quorum queue (issue 12).

    .venv/bin/python benchmarks/queue_bench.py [--consumers 1 4 16] [--mode threads|processes]
        [--messages 20000] [--size 100] [--seconds 30] [--with-rabbit] [--output table|json]
        [--profile DIR]

Tidelog: starts a real 3-node cluster on 127.0.0.1 (or uses `--bootstrap`), fsync `always`,
creates one topic per case with ONE partition and RF 3 and a queue over it, pre-produces
`--messages` records of `--size` bytes, then runs 1, 4 and 16 `QueueConsumer`s (threads, or
processes with `--mode processes`) that receive and ack every message. Figures: acked msgs/s
(acks counted when their future resolves, i.e. committed through Raft), and the ack latency =
time from `ack()` to its future resolving, p50/p99.

`--with-rabbit` then (same run, after the Tidelog cluster is stopped, so the two never share the
CPU) starts a 3-node RabbitMQ cluster through ../shared/peers/rabbit_bench.py's helpers (imported,
not copied), declares a quorum queue (3 members) per case, pre-publishes the same number of
messages of the same size with that script's confirm-window publisher, and consumes with the same
consumer counts: `rabbit_bench.bench_consume` itself for 1 consumer (prefetch 2000, ack
multiple=True every 1000, its baseline), and N pika consumers with those settings, and N pika
consumers acking every message (the same work as Tidelog's per-message acks). AMQP acks are not
confirmed by the broker, so RabbitMQ has no ack latency to report.

`--profile DIR` records every Tidelog node (and the consumer processes) with py-spy during the
`--profile-consumers` case and prints the top functions by share of samples.

Every loop is bounded by a message count and a time limit; every process started is stopped (by
PID) in a `finally:`. Figures, never assertions: compare runs made in one sitting only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from e2e_bench import json_like_value, percentile

REPO = Path(__file__).resolve().parent.parent
PEERS_DIR_DEFAULT = REPO.parent / "shared" / "peers"
RABBIT_PREFETCH = 2000        # rabbit_bench.bench_consume's settings
RABBIT_ACK_EVERY = 1000
RABBIT_PUBLISH_WINDOW = 1000  # rabbit_bench's default confirm window
BARRIER_TIMEOUT_S = 120.0
PROFILE_TOP = 25


def log(text: str) -> None:
    """Progress goes to stderr, so that stdout is only the table or the JSON document."""
    print(text, file=sys.stderr)


# --- results ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class CaseResult:
    """One measurement: one system, one consumer count, one ack style."""

    system: str                 # "tidelog" | "rabbitmq"
    variant: str                # how acks are done
    consumers: int
    mode: str                   # "threads" | "processes"
    size: int
    produced: int
    acked: int
    seconds: float
    msgs_s: float
    ack_p50_ms: float | None
    ack_p99_ms: float | None
    receive_p50_ms: float | None
    settle_rpc_p50_ms: float | None   # one Settle call, client side (the rest of an ack's
    acks_per_settle: float | None     # latency is linger + waiting for the call before it)
    redelivered: int
    duplicates: int
    lock_lost: int
    errors: int
    timed_out: bool
    produce_msgs_s: float
    cpu_s: dict[str, float] = field(default_factory=dict)  # CPU seconds per process, this case
    notes: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerReport:
    """What one consumer sends back to the parent (latencies in ms)."""

    index: int
    acked: int
    ack_ms: list[float] = field(default_factory=list)
    receive_ms: list[float] = field(default_factory=list)
    settle_rpc_ms: list[float] = field(default_factory=list)
    settle_acks: int = 0        # messages covered by the Settle calls timed
    redelivered: int = 0
    duplicates: int = 0
    lock_lost: int = 0
    errors: int = 0
    last_done: float = 0.0      # time.monotonic() of its last resolved ack (system-wide clock)
    cpu_s: float = 0.0          # this process's CPU from the start to the end of the run
    error_text: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class TidelogSpec:
    bootstrap: str
    queue: str
    total: int
    seconds: float
    receive_batch: int
    ack_linger_ms: float
    wait_each: bool = False     # one at a time: wait for each ack before the next receive


@dataclass(frozen=True, slots=True, kw_only=True)
class RabbitSpec:
    peers_dir: str
    port: int
    queue: str
    total: int
    seconds: float
    ack_every: int
    prefetch: int


@dataclass(slots=True)
class Shared:
    """Cross-consumer state; multiprocessing primitives so threads and processes use the same."""

    done: Any           # mp.Value("q"): messages finished (acked) by all consumers together
    stop: Any           # mp.Event: set when `done` reaches the total
    barrier: Any        # mp.Barrier(consumers + 1): every consumer connected, then the clock runs
    reports: Any        # mp.Queue of WorkerReport

    def add(self, n: int, total: int) -> None:
        with self.done.get_lock():
            self.done.value += n
            reached = self.done.value >= total
        if reached:
            self.stop.set()


# --- Tidelog consumers ------------------------------------------------------------------------


def tidelog_worker(index: int, spec: TidelogSpec, shared: Shared) -> None:
    """One QueueConsumer: receive, ack each message, time each ack until its future resolves."""
    from tidelog.client.errors import LockLostError
    from tidelog.client.queue import QueueConsumer

    ack_ms: list[float] = []
    receive_ms: list[float] = []
    cpu_started = time.process_time()
    counts = Counter[str]()
    seen: set[int] = set()
    lock = threading.Lock()
    last_done = [0.0]
    error_text = ""

    def on_done(started: float, future: Any) -> None:
        finished = time.perf_counter()
        try:
            future.result(0)
        except LockLostError:
            with lock:
                counts["lock_lost"] += 1
            return
        except Exception:  # noqa: BLE001 - a benchmark counts errors, it does not stop
            with lock:
                counts["errors"] += 1
            return
        with lock:
            ack_ms.append((finished - started) * 1000)
            last_done[0] = time.monotonic()
        shared.add(1, spec.total)

    try:
        consumer = QueueConsumer(spec.bootstrap, queue=spec.queue,
                                 ack_linger_ms=spec.ack_linger_ms)
    except Exception as exc:  # noqa: BLE001
        shared.barrier.abort()
        shared.reports.put(WorkerReport(index=index, acked=0, error_text=repr(exc)))
        return
    settle_rpc_ms: list[float] = []
    settle_acks = [0]
    time_settle_calls(consumer, settle_rpc_ms, settle_acks)
    try:
        shared.barrier.wait(BARRIER_TIMEOUT_S)
        cpu_started = time.process_time()
        deadline = time.monotonic() + spec.seconds
        while not shared.stop.is_set() and time.monotonic() < deadline:
            started = time.perf_counter()
            messages = consumer.receive(max_messages=spec.receive_batch, timeout_s=0.2)
            if messages:
                receive_ms.append((time.perf_counter() - started) * 1000)
            for message in messages:
                if message.offset in seen:
                    counts["duplicates"] += 1
                seen.add(message.offset)
                if message.delivery_count > 1:
                    counts["redelivered"] += 1
                sent = time.perf_counter()
                future = consumer.ack(message)
                watch(future, lambda f, s=sent: on_done(s, f))
                if spec.wait_each:
                    with contextlib.suppress(Exception):
                        future.result(30)
        consumer.flush(timeout_s=30)
    except Exception as exc:  # noqa: BLE001
        error_text = repr(exc)
    finally:
        with contextlib.suppress(Exception):
            consumer.close()
    with lock:
        report = WorkerReport(
            index=index, acked=len(ack_ms), ack_ms=list(ack_ms), receive_ms=receive_ms,
            settle_rpc_ms=list(settle_rpc_ms), settle_acks=settle_acks[0],
            redelivered=counts["redelivered"], duplicates=counts["duplicates"],
            lock_lost=counts["lock_lost"], errors=counts["errors"], last_done=last_done[0],
            cpu_s=time.process_time() - cpu_started, error_text=error_text)
    shared.reports.put(report)


def time_settle_calls(consumer: Any, out_ms: list[float], acks: list[int]) -> None:
    """Times each Settle call of this consumer (a wrapper on its private coordinator handle, for
    measuring only; skipped if the client's internals change)."""
    coordinator = getattr(consumer, "_coordinator", None)
    original = getattr(coordinator, "call", None)
    if original is None:
        return

    def timed(method: str, request: Any, **kwargs: Any) -> Any:
        if method != "Settle":
            return original(method, request, **kwargs)
        started = time.perf_counter()
        try:
            return original(method, request, **kwargs)
        finally:
            out_ms.append((time.perf_counter() - started) * 1000)
            acks[0] += sum(s.last_offset - s.first_offset + 1 for s in request.settlements)

    coordinator.call = timed


def watch(future: Any, callback: Callable[[Any], None]) -> None:
    """Call back when the settle future resolves: its own done-callback when it has one (the
    exact resolve time); else a waiter thread would add its wake-up to every latency, so refuse."""
    add = getattr(future, "add_done_callback", None)
    if add is None:
        raise TypeError("SettleFuture has no add_done_callback: ack latency cannot be timed")
    add(callback)


# --- RabbitMQ consumers -----------------------------------------------------------------------


def import_rabbit_bench(peers_dir: str) -> Any:
    """../shared/peers/rabbit_bench.py, imported where it lives (it is read-only and not ours)."""
    if peers_dir not in sys.path:
        sys.path.insert(0, peers_dir)
    try:
        import rabbit_bench
    except ImportError as exc:
        raise SystemExit(f"--with-rabbit: cannot import rabbit_bench from {peers_dir}: {exc} "
                         "(pika must be installed in this venv: .venv/bin/pip install pika)"
                         ) from exc
    return rabbit_bench


def rabbit_worker(index: int, spec: RabbitSpec, shared: Shared) -> None:
    """One pika consumer on its own connection: prefetch, ack every `ack_every` deliveries."""
    rb = import_rabbit_bench(spec.peers_dir)
    import pika

    state = {"n": 0, "unacked": 0, "tag": 0, "last": 0.0}
    try:
        connection = pika.BlockingConnection(rb.params(spec.port))
        channel = connection.channel()
        channel.basic_qos(prefetch_count=spec.prefetch)
    except Exception as exc:  # noqa: BLE001
        shared.barrier.abort()
        shared.reports.put(WorkerReport(index=index, acked=0, error_text=repr(exc)))
        return

    def on_message(ch: Any, method: Any, _props: Any, _body: bytes) -> None:
        state["n"] += 1
        state["unacked"] += 1
        state["tag"] = method.delivery_tag
        if state["unacked"] >= spec.ack_every:
            ch.basic_ack(method.delivery_tag, multiple=spec.ack_every > 1)
            state["unacked"] = 0
        state["last"] = time.monotonic()
        shared.add(1, spec.total)

    error_text = ""
    cpu_started = time.process_time()
    try:
        shared.barrier.wait(BARRIER_TIMEOUT_S)
        cpu_started = time.process_time()
        channel.basic_consume(spec.queue, on_message, auto_ack=False)
        deadline = time.monotonic() + spec.seconds
        while not shared.stop.is_set() and time.monotonic() < deadline:
            connection.process_data_events(time_limit=0.05)
        if state["unacked"]:
            channel.basic_ack(state["tag"], multiple=True)
        connection.close()
    except Exception as exc:  # noqa: BLE001
        error_text = repr(exc)
    shared.reports.put(WorkerReport(index=index, acked=state["n"], last_done=state["last"],
                                    cpu_s=time.process_time() - cpu_started,
                                    error_text=error_text))


# --- running N consumers ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class RunOutcome:
    reports: list[WorkerReport]
    seconds: float
    timed_out: bool
    pids: list[int]
    cpu_s: dict[str, float]


def cpu_seconds(pid: int) -> float:
    """utime + stime so far of a process and its live descendants (Linux /proc; the RabbitMQ
    pids are the rabbitmq-server scripts, whose child beam.smp does the work); 0 when gone."""
    total = 0.0
    pending, seen = [pid], set()
    while pending and len(seen) < 1000:
        current = pending.pop()
        seen.add(current)
        try:
            with open(f"/proc/{current}/stat") as handle:
                fields = handle.read().rpartition(")")[2].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as handle:
                    pending += [int(c) for c in handle.read().split() if int(c) not in seen]
        except OSError:
            continue
    return total


def run_consumers(target: Callable[[int, Any, Shared], None], spec: Any, consumers: int,
                  mode: str, bound_s: float, server_pids: Sequence[int] = (),
                  while_running: Callable[[list[int]], None] | None = None) -> RunOutcome:
    """Start `consumers` workers, release them together, wait (bounded) for all to report.
    CPU seconds of each server process and of the consumers are taken over the run."""
    ctx = mp.get_context("spawn")
    shared = Shared(done=ctx.Value("q", 0), stop=ctx.Event(),
                    barrier=ctx.Barrier(consumers + 1), reports=ctx.Queue())
    workers: list[Any] = []
    for i in range(consumers):
        if mode == "processes":
            workers.append(ctx.Process(target=target, args=(i, spec, shared), daemon=True))
        else:
            workers.append(threading.Thread(target=target, args=(i, spec, shared), daemon=True,
                                            name=f"consumer-{i}"))
    for worker in workers:
        worker.start()
    pids = [w.pid for w in workers if mode == "processes"] or [os.getpid()]
    reports: list[WorkerReport] = []
    try:
        shared.barrier.wait(BARRIER_TIMEOUT_S)
        started = time.monotonic()
        server_cpu = [cpu_seconds(pid) for pid in server_pids]
        parent_cpu = time.process_time()
        if while_running is not None:
            while_running(pids)
        for _ in range(consumers):
            reports.append(shared.reports.get(timeout=bound_s + 90))
        cpu = {f"server{i + 1}": round(cpu_seconds(pid) - before, 2)
               for i, (pid, before) in enumerate(zip(server_pids, server_cpu, strict=True))}
        cpu["consumers"] = round(sum(r.cpu_s for r in reports) if mode == "processes"
                                 else time.process_time() - parent_cpu, 2)
    finally:
        shared.stop.set()
        for worker in workers:
            worker.join(timeout=30)
            if mode == "processes" and worker.is_alive():
                worker.kill()
                worker.join(timeout=10)
    ends = [r.last_done for r in reports if r.last_done > 0]
    elapsed = (max(ends) - started) if ends else bound_s
    timed_out = shared.done.value < getattr(spec, "total", 0)
    return RunOutcome(reports=sorted(reports, key=lambda r: r.index),
                      seconds=max(elapsed, 1e-9), timed_out=timed_out, pids=pids, cpu_s=cpu)


def summarize(system: str, variant: str, consumers: int, mode: str, size: int, produced: int,
              produce_msgs_s: float, outcome: RunOutcome, notes: str = "") -> CaseResult:
    ack_ms = [v for r in outcome.reports for v in r.ack_ms]
    receive_ms = [v for r in outcome.reports for v in r.receive_ms]
    settle_ms = [v for r in outcome.reports for v in r.settle_rpc_ms]
    settle_acks = sum(r.settle_acks for r in outcome.reports)
    acked = sum(r.acked for r in outcome.reports)
    errors_text = "; ".join(sorted({r.error_text for r in outcome.reports if r.error_text}))
    return CaseResult(
        system=system, variant=variant, consumers=consumers, mode=mode, size=size,
        produced=produced, acked=acked, seconds=round(outcome.seconds, 3),
        msgs_s=acked / outcome.seconds,
        ack_p50_ms=percentile(ack_ms, 0.5) if ack_ms else None,
        ack_p99_ms=percentile(ack_ms, 0.99) if ack_ms else None,
        receive_p50_ms=percentile(receive_ms, 0.5) if receive_ms else None,
        settle_rpc_p50_ms=percentile(settle_ms, 0.5) if settle_ms else None,
        acks_per_settle=round(settle_acks / len(settle_ms), 1) if settle_ms else None,
        redelivered=sum(r.redelivered for r in outcome.reports),
        duplicates=sum(r.duplicates for r in outcome.reports),
        lock_lost=sum(r.lock_lost for r in outcome.reports),
        errors=sum(r.errors for r in outcome.reports) + (1 if errors_text else 0),
        timed_out=outcome.timed_out, produce_msgs_s=produce_msgs_s, cpu_s=outcome.cpu_s,
        notes="; ".join(x for x in (notes, errors_text) if x))


# --- Tidelog side -----------------------------------------------------------------------------


@contextlib.contextmanager
def tidelog_cluster(bootstrap: str | None, env: dict[str, str] | None = None
                    ) -> Iterator[tuple[str, list[int]]]:
    """(bootstrap, node pids): a fresh 3-node cluster, fsync always, stopped at exit; `env`
    is added to the nodes' environment (--node-env)."""
    if bootstrap:
        yield bootstrap, []
        return
    from tidelog.node.local_cluster import LocalCluster

    with tempfile.TemporaryDirectory(prefix="tidelog-qbench-") as tmp:
        cluster = LocalCluster(3, Path(tmp), extra_args=("--fsync", "always"), env=env)
        with cluster:
            cluster.wait_healthy(60)
            log(f"tidelog: started 3 nodes {cluster.bootstrap} "
                  f"(pids {[n.pid for n in cluster.nodes]})")
            yield cluster.bootstrap, [n.pid for n in cluster.nodes if n.pid]


def produce(bootstrap: str, topic: str, count: int, size: int) -> float:
    """Pre-produce `count` distinct JSON-like records (null keys) with the Producer; msgs/s."""
    from tidelog.client import Producer

    started = time.perf_counter()
    with Producer(bootstrap, acks="all") as producer:
        for i in range(count):
            producer.send(topic, json_like_value(size, i))
        producer.flush()
    return count / (time.perf_counter() - started)


def records_per_batch(bootstrap: str, topic: str) -> float:
    """Mean records per stored batch in the first 4 MiB of partition 0: a receive returns whole
    stored batches, so this is how much the client decodes per message it keeps."""
    import grpc
    from tidelog.node.local_cluster import metadata
    from tidelog.proto import broker_pb2 as pb
    from tidelog.proto import broker_pb2_grpc
    from tidelog.proto.batch import iter_batches

    answer = metadata(bootstrap.split(",")[0], [topic])
    nodes = {n.id: n.address for n in answer.nodes}
    leader = nodes[answer.topics[0].partitions[0].leader_id]
    with grpc.insecure_channel(leader, options=[("grpc.max_receive_message_length",
                                                 64 << 20)]) as channel:
        reply = broker_pb2_grpc.BrokerStub(channel).Fetch(pb.FetchRequest(
            partitions=[pb.FetchPartition(topic=topic, partition=0, offset=0,
                                          max_bytes=4 << 20)],
            max_wait_ms=0, max_bytes=4 << 20), timeout=10)
    counts = [h.record_count for _, h in iter_batches(reply.partitions[0].batches, verify=False)
              if not h.is_control]
    return sum(counts) / len(counts) if counts else 0.0


def create_queue(bootstrap: str, name: str, topic: str) -> str:
    """Topic (1 partition, RF 3) and queue (defaults), before anything is produced; returns
    where the data partition's leader is, for the notes."""
    from tidelog.client import Admin
    from tidelog.client.queue import QueueConsumer

    with Admin(bootstrap) as admin:
        admin.create_topic(topic, partitions=1, replication_factor=3)
        if hasattr(admin, "create_queue"):
            admin.create_queue(name, [topic])
        else:  # the implicit way: a consumer naming topics creates a missing queue
            with QueueConsumer(bootstrap, queue=name, topics=[topic]) as consumer:
                got = consumer.receive(max_messages=1, timeout_s=0.1)
                assert not got, "the topic is empty: nothing can be received yet"
        description = admin.describe_topics([topic])[0]
    leader = description.partitions[0].leader_id
    return f"data leader node {leader}"


def queue_coordinator(bootstrap: str, name: str) -> str:
    """The queue's coordinator and its stats after the case (depth 0 = everything acked)."""
    from tidelog.client import Admin

    with Admin(bootstrap) as admin:
        if not hasattr(admin, "describe_queue"):
            return "coordinator ? (Admin.describe_queue missing)"
        described = admin.describe_queue(name)
    stats = described.stats
    return (f"coordinator node {described.coordinator_id}, after: depth {stats.depth}, "
            f"acked_total {stats.acked_total}")


def run_tidelog(args: argparse.Namespace, bootstrap: str, node_pids: list[int],
                profiles: dict[str, Any]) -> list[CaseResult]:
    results = []
    for consumers in args.consumers:
        stamp = int(time.time() * 1000)
        topic = f"qbench-{consumers}c-{stamp}"
        queue = topic
        leaders = create_queue(bootstrap, queue, topic)
        produce_rate = produce(bootstrap, topic, args.messages, args.size)
        leaders += f", {records_per_batch(bootstrap, topic):.0f} records per stored batch"
        log(f"tidelog: {consumers} consumer(s): produced {args.messages} x {args.size} B "
            f"({produce_rate:,.0f} msgs/s), {leaders}")
        spec = TidelogSpec(bootstrap=bootstrap, queue=queue, total=args.messages,
                           seconds=args.seconds, receive_batch=args.receive_batch,
                           ack_linger_ms=args.ack_linger_ms)
        hook = None
        if args.profile and consumers == args.profile_consumers:
            hook = profiler_hook(args, node_pids, profiles, consumers)
        outcome = run_consumers(tidelog_worker, spec, consumers, args.mode, args.seconds,
                                server_pids=node_pids, while_running=hook)
        if hook is not None:
            finish_profiles(profiles)
        notes = f"{leaders}, {queue_coordinator(bootstrap, queue)}"
        result = summarize("tidelog", f"ack each (linger {args.ack_linger_ms:g} ms)", consumers,
                           args.mode, args.size, args.messages, produce_rate, outcome, notes)
        log(f"tidelog: {consumers} consumer(s): {result.msgs_s:,.0f} msgs/s, ack p50 "
              f"{fmt_ms(result.ack_p50_ms)} ms, {notes}")
        results.append(result)
    if args.one_at_a_time:
        # With the default linger and with none: an ack made while nothing is in flight
        # need not wait (ack_linger_ms=0 sends at once; batching then comes from the
        # Settle requests in flight).
        for linger_ms in dict.fromkeys((args.ack_linger_ms, 0.0)):
            results.append(tidelog_one_at_a_time(args, bootstrap, node_pids, linger_ms))
    return results


def tidelog_one_at_a_time(args: argparse.Namespace, bootstrap: str,
                          node_pids: list[int], linger_ms: float) -> CaseResult:
    """The latency floor: one consumer receives 1 message, acks it, waits for the ack, again."""
    topic = f"qbench-serial-{int(time.time() * 1000)}"
    leaders = create_queue(bootstrap, topic, topic)
    rate = produce(bootstrap, topic, args.one_at_a_time, args.size)
    spec = TidelogSpec(bootstrap=bootstrap, queue=topic, total=args.one_at_a_time,
                       seconds=args.seconds, receive_batch=1, ack_linger_ms=linger_ms,
                       wait_each=True)
    outcome = run_consumers(tidelog_worker, spec, 1, "threads", args.seconds,
                            server_pids=node_pids)
    notes = f"{leaders}, {queue_coordinator(bootstrap, topic)}"
    result = summarize("tidelog", f"one at a time: receive 1, ack, wait (linger {linger_ms:g} ms)",
                       1, "threads", args.size, args.one_at_a_time, rate, outcome, notes)
    log(f"tidelog: one at a time: {result.msgs_s:,.0f} msgs/s, receive p50 "
        f"{fmt_ms(result.receive_p50_ms)} ms, ack p50 {fmt_ms(result.ack_p50_ms)} ms")
    return result


# --- RabbitMQ side ----------------------------------------------------------------------------


@contextlib.contextmanager
def rabbit_cluster(peers_dir: str, nodes: int) -> Iterator[tuple[Any, int, list[int]]]:
    """(rabbit_bench module, AMQP port of node 0, node pids): the cluster that
    rabbit_bench.main() would start, built from its own helpers, stopped in the same order it
    stops (rabbitmqctl stop, then the PIDs, then the epmd it spawned)."""
    rb = import_rabbit_bench(peers_dir)
    if not os.path.exists(f"{rb.RMQ_BIN}/rabbitmq-server"):
        raise SystemExit(f"--with-rabbit: {rb.RMQ_BIN}/rabbitmq-server is missing: run "
                         f"{peers_dir}/install.sh (apt-get install rabbitmq-server) as root")
    tmp = tempfile.mkdtemp(prefix="rmq-qbench-", dir="/tmp")
    procs = rb.Procs()
    epmd_before = rb.epmd_pids()
    try:
        rb.prepare(tmp, nodes)
        for i in range(nodes):
            env, directory = rb.node_env(tmp, i)
            with open(os.path.join(directory, "stdout.log"), "w") as out:
                procs.start([f"{rb.RMQ_BIN}/rabbitmq-server"], env=env, stdout=out,
                            cwd=directory)
        log(f"rabbitmq: started {nodes} nodes (pids {[p.pid for p in procs.procs]})")
        for i in range(nodes):
            rb.wait_port(rb.AMQP_BASE + i, timeout=120)
            rb.ctl(tmp, rb.node_name(i), "await_startup")
        for i in range(1, nodes):
            rb.ctl(tmp, rb.node_name(i), "stop_app")
            rb.ctl(tmp, rb.node_name(i), "reset")
            rb.ctl(tmp, rb.node_name(i), "join_cluster", rb.node_name(0))
            rb.ctl(tmp, rb.node_name(i), "start_app")
        yield rb, rb.AMQP_BASE, [p.pid for p in procs.procs]
    finally:
        for i in reversed(range(nodes)):
            try:
                rb.ctl(tmp, rb.node_name(i), "stop", timeout=60)
            except Exception as exc:  # noqa: BLE001
                log(f"rabbitmq: stop {rb.node_name(i)} failed: {exc}")
        procs.stop_all(grace=30)
        for pid in rb.epmd_pids() - epmd_before:
            log(f"rabbitmq: stopping epmd pid={pid} (started by this benchmark)")
            rb.kill_pid(pid)
        shutil.rmtree(tmp, ignore_errors=True)


def rabbit_fill(rb: Any, port: int, queue: str, nodes: int, count: int, size: int,
                seconds: float) -> float:
    """Declare the quorum queue and pre-publish with rabbit_bench's confirm-window publisher."""
    rb.declare_qq(port, queue, nodes)
    acked, nacked, elapsed, timed_out = rb.bench_async(
        port, queue, rb.make_payload(size), count, RABBIT_PUBLISH_WINDOW, seconds)
    if nacked or timed_out or rb.queue_len(port, queue) != count:
        raise RuntimeError(f"rabbitmq: pre-publish of {count} got {acked} acked, {nacked} nacked, "
                           f"timed out {timed_out}")
    return acked / elapsed


def run_rabbit(args: argparse.Namespace) -> list[CaseResult]:
    results = []
    peers_dir = str(args.peers_dir)
    with rabbit_cluster(peers_dir, args.rabbit_nodes) as (rb, port, node_pids):
        for consumers in args.consumers:
            variants = [("ack multiple every 1000", RABBIT_ACK_EVERY), ("ack each", 1)]
            for variant, ack_every in variants:
                queue = f"qbench_{consumers}c_{ack_every}_{int(time.time() * 1000)}"
                rate = rabbit_fill(rb, port, queue, args.rabbit_nodes, args.messages, args.size,
                                   args.seconds * 2)
                if consumers == 1 and ack_every == RABBIT_ACK_EVERY:
                    outcome = rabbit_script_consume(rb, port, queue, args.messages, args.seconds,
                                                    node_pids)
                    variant = "rabbit_bench.bench_consume (ack multiple every 1000)"
                else:
                    spec = RabbitSpec(peers_dir=peers_dir, port=port, queue=queue,
                                      total=args.messages, seconds=args.seconds,
                                      ack_every=ack_every, prefetch=RABBIT_PREFETCH)
                    outcome = run_consumers(rabbit_worker, spec, consumers, args.mode,
                                            args.seconds, server_pids=node_pids)
                left = rb.queue_len(port, queue)
                rb.delete_q(port, queue)
                result = summarize("rabbitmq", variant, consumers, args.mode, args.size,
                                   args.messages, rate, outcome,
                                   f"quorum queue {args.rabbit_nodes} members, prefetch "
                                   f"{RABBIT_PREFETCH}, {left} left in the queue")
                log(f"rabbitmq: {consumers} consumer(s), {variant}: {result.msgs_s:,.0f} "
                      f"msgs/s")
                results.append(result)
    return results


def rabbit_script_consume(rb: Any, port: int, queue: str, total: int, seconds: float,
                          node_pids: Sequence[int]) -> RunOutcome:
    """The peers script's own consumer, unchanged (its baseline figure), in this process."""
    before = [cpu_seconds(pid) for pid in node_pids]
    parent_cpu = time.process_time()
    got, elapsed = rb.bench_consume(port, queue, total, seconds)
    cpu = {f"server{i + 1}": round(cpu_seconds(pid) - b, 2)
           for i, (pid, b) in enumerate(zip(node_pids, before, strict=True))}
    cpu["consumers"] = round(time.process_time() - parent_cpu, 2)
    report = WorkerReport(index=0, acked=got)
    return RunOutcome(reports=[report], seconds=elapsed, timed_out=got < total, pids=[],
                      cpu_s=cpu)


# --- profiling --------------------------------------------------------------------------------


def profiler_hook(args: argparse.Namespace, node_pids: list[int], profiles: dict[str, Any],
                  consumers: int) -> Callable[[list[int]], None]:
    """Starts py-spy on every node and consumer process once the consumers are released."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not os.path.exists(py_spy):
        raise SystemExit("--profile needs py-spy: .venv/bin/pip install py-spy")
    out_dir = Path(args.profile)
    out_dir.mkdir(parents=True, exist_ok=True)

    def start(consumer_pids: list[int]) -> None:
        targets = [(f"node{i + 1}", pid) for i, pid in enumerate(node_pids)]
        # Two consumer processes are enough to see the client's costs (py-spy itself costs CPU).
        targets += [(f"consumers{j}", pid) for j, pid in enumerate(consumer_pids[:2])]
        for name, pid in targets:
            path = out_dir / f"{name}-c{consumers}.txt"
            command = [py_spy, "record", "--pid", str(pid), "--rate", str(args.profile_rate),
                       "--duration", str(int(args.seconds) + 30), "--format", "raw",
                       "--nonblocking", "--threads", "-o", str(path)]
            if not args.profile_all_threads:
                command.append("--gil")
            if args.profile_native:  # py-spy refuses --native with --nonblocking
                command = [c for c in command if c != "--nonblocking"] + ["--native"]
            process = subprocess.Popen(command, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL)
            profiles[name] = {"pid": pid, "path": str(path), "process": process,
                              "started": time.monotonic(), "seconds": 0.0,
                              "rate": args.profile_rate}
        log(f"profile: py-spy on {[t[0] for t in targets]} until the case ends")

    return start


def finish_profiles(profiles: dict[str, Any]) -> None:
    """SIGINT ends a py-spy record and makes it write its file: the samples cover the case only."""
    for entry in profiles.values():
        process = entry.get("process")
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGINT)
            entry["seconds"] = time.monotonic() - entry["started"]
    for entry in profiles.values():
        process = entry.pop("process", None)
        if process is None:
            continue
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        if not entry["seconds"]:
            entry["seconds"] = time.monotonic() - entry["started"]


# Frames every stack passes through (the loop, thread bootstrap, module start): left out of the
# inclusive ranking so that it shows the code that costs.
PLUMBING = ("asyncio/", "threading.py", "<frozen runpy>", "concurrent/futures/", "node/main.py",
            "selectors.py")
FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def short_frame(frame: str) -> str:
    """`func (path/to/file.py:12)` -> `func (to/file.py)`: lines merged, paths shortened."""
    match = FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    path = match["file"]
    for marker in ("/site-packages/", "/work/main/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{match['func']} ({path})"


def analyze_profile(path: str) -> dict[str, Any]:
    """Inclusive and self share of samples per function, from py-spy's raw (collapsed) output."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    with contextlib.suppress(FileNotFoundError), open(path) as handle:
        for line in handle:
            stack, _, count_text = line.rstrip("\n").rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            count = int(count_text)
            frames = stack.split(";")
            if frames and frames[0].startswith(("thread (", "process ")):
                threads[frames[0]] += count
                frames = frames[1:]
            names = [short_frame(f) for f in frames if f]
            if not names:
                continue
            total += count
            for name in set(names):
                if not any(part in name for part in PLUMBING):
                    inclusive[name] += count
            own[names[-1]] += count
    def top(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(name, round(100 * n / total, 1)) for name, n in counter.most_common(PROFILE_TOP)]
    return {"samples": total, "inclusive_pct": top(inclusive) if total else [],
            "self_pct": top(own) if total else [],
            "threads": threads.most_common(8)}


# --- output -----------------------------------------------------------------------------------


def fmt_ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def ratios(tidelog: list[CaseResult], rabbit: list[CaseResult]) -> list[dict[str, Any]]:
    rows = []
    for ours in tidelog:
        theirs = {r.variant.split(" (")[0] if r.variant.startswith("rabbit_bench") else r.variant:
                  r for r in rabbit if r.consumers == ours.consumers}
        each = theirs.get("ack each")
        batched = theirs.get("ack multiple every 1000") or theirs.get("rabbit_bench.bench_consume")
        rows.append({
            "consumers": ours.consumers,
            "tidelog_msgs_s": round(ours.msgs_s, 1),
            "vs_rabbit_ack_each": round(ours.msgs_s / each.msgs_s, 3) if each else None,
            "vs_rabbit_ack_1000": round(ours.msgs_s / batched.msgs_s, 3) if batched else None,
            "ack_p50_ms": ours.ack_p50_ms,
            "goal_rate_met": bool(each and batched and ours.msgs_s >= max(each.msgs_s,
                                                                          batched.msgs_s)),
            "goal_p50_met": ours.ack_p50_ms is not None and ours.ack_p50_ms <= 5.0,
        })
    return rows


def print_tables(results: list[CaseResult], ratio_rows: list[dict[str, Any]],
                 profiles: dict[str, Any]) -> None:
    from tidelog.node.tables import render_table

    print()
    print("Receive + ack, one partition / one quorum queue, 3 nodes, RF 3, fsync before ack")
    print(render_table(
        ["system", "ack", "consumers", "mode", "size", "acked", "s", "msgs/s", "ack p50 ms",
         "ack p99 ms", "receive p50 ms", "Settle call p50 ms", "acks/Settle", "redelivered",
         "dups", "lock lost", "errors", "timed out"],
        [[r.system, r.variant, r.consumers, r.mode, f"{r.size} B", r.acked, f"{r.seconds:.2f}",
          f"{r.msgs_s:,.0f}", fmt_ms(r.ack_p50_ms), fmt_ms(r.ack_p99_ms),
          fmt_ms(r.receive_p50_ms), fmt_ms(r.settle_rpc_p50_ms),
          "–" if r.acks_per_settle is None else r.acks_per_settle, r.redelivered,
          r.duplicates, r.lock_lost, r.errors,
          "yes" if r.timed_out else "no"] for r in results]))
    notes = [f"  {r.system} {r.consumers}c {r.variant}: {r.notes}; CPU s "
             + ", ".join(f"{k} {v:.2f}" for k, v in r.cpu_s.items()) for r in results]
    if notes:
        print("notes:")
        print("\n".join(notes))
    if ratio_rows:
        print()
        print("Tidelog / RabbitMQ (goal: ratio >= 1 against both, ack p50 <= 5 ms)")
        print(render_table(
            ["consumers", "tidelog msgs/s", "vs rabbit ack each", "vs rabbit ack 1000",
             "ack p50 ms", "rate goal", "p50 goal"],
            [[r["consumers"], f"{r['tidelog_msgs_s']:,.0f}", r["vs_rabbit_ack_each"],
              r["vs_rabbit_ack_1000"], fmt_ms(r["ack_p50_ms"]),
              "met" if r["goal_rate_met"] else "NOT met",
              "met" if r["goal_p50_met"] else "NOT met"] for r in ratio_rows]))
    for name, entry in profiles.items():
        summary = entry.get("summary") or {}
        print()
        busy = summary.get("samples", 0) / max(1.0, entry["rate"] * entry["seconds"])
        print(f"Profile {name} (pid {entry['pid']}, {summary.get('samples', 0)} samples at "
              f"{entry['rate']}/s over {entry['seconds']:.1f} s = busy {100 * busy:.0f}% of the "
              f"time, {entry['path']}); % = share of its samples")
        print(render_table(["inclusive %", "function"],
                           [[pct, name_] for name_, pct in summary.get("inclusive_pct", [])]))
        print(render_table(["self %", "function"],
                           [[pct, name_] for name_, pct in summary.get("self_pct", [])]))


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "load_avg_at_start": os.getloadavg(),
            "python": sys.version.split()[0],
            "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


# --- main -------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--consumers", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--mode", choices=["threads", "processes"], default="threads",
                        help="consumers as threads of this process, or one process each")
    parser.add_argument("--messages", type=int, default=50_000,
                        help="pre-produced per case; the case ends when all are acked")
    parser.add_argument("--size", type=int, default=100, help="message bytes")
    parser.add_argument("--seconds", type=float, default=30.0, help="time bound per case")
    parser.add_argument("--receive-batch", type=int, default=100,
                        help="max_messages per receive() (Tidelog)")
    parser.add_argument("--ack-linger-ms", type=float, default=1.0,
                        help="QueueConsumer ack_linger_ms (acks batched on the wire)")
    parser.add_argument("--one-at-a-time", type=int, default=500, metavar="N",
                        help="then N messages one at a time (the latency floor); 0: skip")
    parser.add_argument("--bootstrap", help="use a running Tidelog cluster instead of starting one")
    parser.add_argument("--no-tidelog", action="store_true", help="only the RabbitMQ side")
    parser.add_argument("--with-rabbit", action="store_true",
                        help="also RabbitMQ quorum queues via ../shared/peers/rabbit_bench.py")
    parser.add_argument("--rabbit-nodes", type=int, default=3)
    parser.add_argument("--peers-dir", type=Path, default=PEERS_DIR_DEFAULT)
    parser.add_argument("--profile", metavar="DIR",
                        help="py-spy every node and consumer process during one case")
    parser.add_argument("--profile-consumers", type=int, default=4,
                        help="the case (consumer count) to profile")
    parser.add_argument("--profile-rate", type=int, default=100, help="py-spy samples/s")
    parser.add_argument("--profile-all-threads", action="store_true",
                        help="sample every non-idle thread, not only the one holding the GIL "
                             "(the default shows where Python's CPU goes; this also shows "
                             "threads blocked in fdatasync or select)")
    parser.add_argument("--node-env", action="append", default=[], metavar="KEY=VALUE",
                        help="added to every started node's environment (repeatable)")
    parser.add_argument("--profile-native", action="store_true",
                        help="py-spy --native: C frames too (what a grpc write does inside)")
    parser.add_argument("--output", choices=["table", "json"], default="table")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = machine()
    results: list[CaseResult] = []
    profiles: dict[str, Any] = {}
    if not args.no_tidelog:
        env = dict(item.split("=", 1) for item in args.node_env)
        with tidelog_cluster(args.bootstrap, env) as (bootstrap, node_pids):
            results += run_tidelog(args, bootstrap, node_pids, profiles)
    if args.with_rabbit:
        results += run_rabbit(args)
    for entry in profiles.values():
        entry["summary"] = analyze_profile(entry["path"])
    rabbit = [r for r in results if r.system == "rabbitmq"]
    ratio_rows = ratios([r for r in results if r.system == "tidelog" and
                         not r.variant.startswith("one at a time")], rabbit) if rabbit else []
    if args.output == "json":
        print(json.dumps({"machine": started, "results": [asdict(r) for r in results],
                          "ratios": ratio_rows,
                          "profiles": {k: {"pid": v["pid"], "path": v["path"],
                                           **v.get("summary", {})}
                                       for k, v in profiles.items()}}, indent=1))
    else:
        print(f"machine: {started}")
        print_tables(results, ratio_rows, profiles)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
