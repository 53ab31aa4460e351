"""Replica comparison after the heal (tidelog.chaos.replicas): real partition logs on disk, as a
stopped node leaves them, digested offline; the checker's replica-consistency judges the events.
"""

from __future__ import annotations

from pathlib import Path

from tidelog.chaos.checker import Checker, CheckerConfig
from tidelog.chaos.history import METADATA_PARTITION, History, ReplicaDigest
from tidelog.chaos.replicas import digest_replicas, partition_dir
from tidelog.chaos.results import CheckName, Verdict
from tidelog.node.replica_state import DurableMarker, RaftStateFile, write_state
from tidelog.node.storage import LogConfig, PartitionLog
from tidelog.proto.batch import encode_batch

NODES = ("n1", "n2", "n3")


def _batch(tag: str) -> bytes:
    return encode_batch([(b"k", tag.encode(), (), 1_700_000_000_000)])


def _replica(root: Path, node: str, tags: list[str], *, commit: int,
             name: str = "chaos-0.1", marker_commit: int | None = None) -> Path:
    """A node's data dir holding one partition: one record per tag at offsets 0.., term 1, a
    raft.state recording offsets up to `commit` as committed and, if asked, a durable marker
    recording `marker_commit`, as the replica writes them."""
    _log(root / node / "partitions" / name, tags, commit=commit, marker_commit=marker_commit)
    if not (root / node / "metadata").exists():
        _log(root / node / "metadata", ["m0", "m1"], commit=1)
    return root / node


def _log(directory: Path, tags: list[str], *, commit: int,
         marker_commit: int | None = None) -> None:
    log = PartitionLog.open(directory, LogConfig())
    for tag in tags:
        log.append(_batch(tag), term=1)
    log.sync()
    log.close()
    write_state(directory, RaftStateFile(term=1, commit=commit))
    if marker_commit is not None:
        marker = DurableMarker(directory)
        marker.write(durable_upto=len(tags) - 1, commit=marker_commit)
        marker.close()


def _contents(directory: Path | None) -> dict[str, bytes]:
    assert directory is not None
    return {str(p.relative_to(directory)): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def _digests(tmp_path: Path, dirs: dict[str, Path], hw: int) -> list[ReplicaDigest]:
    """Partition 0's events (the metadata log's, always identical here, are checked apart)."""
    events = _all_digests(tmp_path, dirs, hw)
    metadata = [e for e in events if e.partition == METADATA_PARTITION]
    assert [e.node for e in metadata] == sorted(dirs) and len({e.digest for e in metadata}) == 1
    return [e for e in events if e.partition == 0]


def _all_digests(tmp_path: Path, dirs: dict[str, Path], hw: int) -> list[ReplicaDigest]:
    return digest_replicas(dirs, "chaos", {0: hw}, {0: NODES}, scratch=tmp_path / "scratch",
                           time_ms=1.0)


def _judge(events: list[ReplicaDigest]):  # type: ignore[no-untyped-def]
    results = Checker(CheckerConfig(faults_required=False)).check(History(tuple(events)))
    return results.check(CheckName.REPLICAS)


def test_identical_replicas_get_one_digest_over_the_common_committed_prefix(
        tmp_path: Path) -> None:
    tags = [f"r{i}" for i in range(10)]
    dirs = {"n1": _replica(tmp_path, "n1", tags, commit=2, marker_commit=9),  # the newer wins
            "n2": _replica(tmp_path, "n2", tags, commit=9),
            "n3": _replica(tmp_path, "n3", tags, commit=7)}  # it had heard of less
    before = _contents(partition_dir(dirs["n1"], "chaos", 0))
    events = _digests(tmp_path, dirs, hw=10)
    assert [e.node for e in events] == list(NODES)
    assert {e.upto_offset for e in events} == {8}  # the lowest commit + 1, below the hw
    assert len({e.digest for e in events}) == 1 and events[0].digest is not None
    assert _judge(events).verdict is Verdict.PASS
    assert not (tmp_path / "scratch").exists()  # the copies are removed
    # The node's own directory was copied, never opened: not a byte of it changed.
    assert _contents(partition_dir(dirs["n1"], "chaos", 0)) == before


def test_a_replica_holding_another_committed_record_is_inconsistent(tmp_path: Path) -> None:
    tags = [f"r{i}" for i in range(10)]
    other = [*tags[:4], "stray", *tags[5:]]
    dirs = {"n1": _replica(tmp_path, "n1", tags, commit=9),
            "n2": _replica(tmp_path, "n2", tags, commit=9),
            "n3": _replica(tmp_path, "n3", other, commit=9)}
    replicas = _judge(_digests(tmp_path, dirs, hw=10))
    assert replicas.verdict is Verdict.FAIL and replicas.count("divergent") == 1
    assert replicas.examples[0].startswith("INCONSISTENT p0:")
    assert "n1,n2 [0,10)" in replicas.examples[0] and "n3 [0,10)" in replicas.examples[0]


def test_a_different_tail_beyond_a_replicas_commit_is_no_mismatch(tmp_path: Path) -> None:
    """A lagging follower may still hold an old leader's uncommitted entries above its commit:
    the comparison stops at the common committed offset, so that is not a false alarm."""
    tags = [f"r{i}" for i in range(10)]
    stale = [*tags[:6], "old-term-a", "old-term-b"]
    dirs = {"n1": _replica(tmp_path, "n1", tags, commit=9),
            "n2": _replica(tmp_path, "n2", tags, commit=9),
            "n3": _replica(tmp_path, "n3", stale, commit=5)}
    events = _digests(tmp_path, dirs, hw=10)
    assert {e.upto_offset for e in events} == {6}
    assert _judge(events).verdict is Verdict.PASS


def test_a_missing_replica_and_a_log_short_of_its_commit_fail(tmp_path: Path) -> None:
    tags = [f"r{i}" for i in range(10)]
    dirs = {"n1": _replica(tmp_path, "n1", tags, commit=9),
            "n2": _replica(tmp_path, "n2", tags[:5], commit=9),  # lost committed entries
            "n3": tmp_path / "n3"}  # no directory for the partition at all
    _log(tmp_path / "n3" / "metadata", ["m0", "m1"], commit=1)
    events = _digests(tmp_path, dirs, hw=10)
    by_node = {e.node: e for e in events}
    assert by_node["n2"].digest is None and "ends at 5" in by_node["n2"].detail
    assert by_node["n3"].digest is None and "no directory" in by_node["n3"].detail
    replicas = _judge(events)
    assert replicas.verdict is Verdict.FAIL and replicas.count("unreadable") == 2


def test_a_replica_with_damaged_committed_bytes_is_unreadable_not_hashed(tmp_path: Path) -> None:
    tags = [f"r{i}" for i in range(10)]
    dirs = {n: _replica(tmp_path, n, tags, commit=9) for n in NODES}
    (segment,) = partition_dir(dirs["n2"], "chaos", 0).glob("*.log")
    data = bytearray(segment.read_bytes())
    data[len(data) // 2] ^= 0x40  # one bit, inside a committed batch
    segment.write_bytes(bytes(data))
    events = _digests(tmp_path, dirs, hw=10)
    damaged = next(e for e in events if e.node == "n2")
    assert damaged.digest is None, damaged
    replicas = _judge(events)
    assert replicas.verdict is Verdict.FAIL and replicas.count("unreadable") == 1
    assert replicas.examples[0].startswith("p0 replica n2 unreadable")


def test_nodes_whose_metadata_logs_differ_are_inconsistent(tmp_path: Path) -> None:
    tags = ["r0", "r1"]
    dirs = {n: _replica(tmp_path, n, tags, commit=1) for n in ("n1", "n2")}
    _log(tmp_path / "n3" / "metadata", ["m0", "other"], commit=1)
    dirs["n3"] = _replica(tmp_path, "n3", tags, commit=1)
    events = _all_digests(tmp_path, dirs, hw=2)
    replicas = _judge(events)
    assert replicas.verdict is Verdict.FAIL and replicas.count("divergent") == 1
    assert replicas.examples[0].startswith("INCONSISTENT metadata:")
    assert "n1,n2 [0,2)" in replicas.examples[0]


def test_the_newest_directory_of_a_recreated_topic_is_the_replica(tmp_path: Path) -> None:
    _replica(tmp_path, "n1", ["a"], commit=0, name="chaos-0.1")
    _replica(tmp_path, "n1", ["a"], commit=0, name="chaos-0.12")
    _replica(tmp_path, "n1", ["a"], commit=0, name="chaos-01.3")  # partition 01 is not 0
    found = partition_dir(tmp_path / "n1", "chaos", 0)
    assert found is not None and found.name == "chaos-0.12"
    assert partition_dir(tmp_path / "n1", "chaos", 1) is None
