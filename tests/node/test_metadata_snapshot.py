"""Metadata snapshots (node/metadata_snapshot.py): round trip, strict refusal, power loss.

No processes: the state is built by applying real encoded commands of every kind, exactly as a
node applies its log; the files are written through the SimFileSystem disk twin, cut mid-write.
"""

from __future__ import annotations

import dataclasses
import random
import typing
from pathlib import Path

import pytest
from tidelog.node import metadata_commands as mc
from tidelog.node.metadata import MetadataState
from tidelog.node.metadata_snapshot import (
    MetadataSnapshot,
    SnapshotError,
    decode_snapshot,
    encode_snapshot,
    list_snapshots,
    load_newest,
    prune_snapshots,
    snapshot_path,
    write_snapshot_file,
)
from tidelog.node.security.acl import AclBinding
from tidelog.node.security.quotas import QuotaEntity, QuotaKind
from tidelog.node.security.scram import MECHANISM, derive_credential
from tidelog.node.sim.simfs import SimFileSystem
from tidelog.node.storage.metafile import write_checksummed


def _user(name: str, mode: str = "create") -> mc.UpsertUser:
    cred = derive_credential("pw-" + name, b"s" * 16, 4096)
    return mc.UpsertUser(name=name, mode=mode, mechanism=MECHANISM, salt=cred.salt,
                         iterations=cred.iterations, stored_key=cred.stored_key,
                         server_key=cred.server_key)


def _acl(principal: str, topic: str) -> AclBinding:
    return AclBinding.from_wire({"principal": principal, "resource_type": "topic",
                                 "pattern_type": "literal", "resource_name": topic,
                                 "operation": "write", "permission": "allow"})


def commands() -> list[mc.Command]:
    """At least one command of every kind, leaving every state field away from its default."""
    quota = QuotaEntity(user="User:alice", client_id="app")
    return [
        mc.RegisterNode(node_id=1, address="127.0.0.1:1", listeners=(("ext", "h:1"),)),
        mc.RegisterNode(node_id=2, address="127.0.0.1:2"),
        mc.RegisterNode(node_id=3, address="127.0.0.1:3"),
        mc.CreateTopic(name="orders", partitions=3, replication_factor=2,
                       configs=(("retention.ms", "60000"),)),
        mc.CreateTopic(name="gone", partitions=1, replication_factor=1),
        mc.DeleteTopic(name="gone"),
        mc.AlterConfigs(name="orders", set=(("retention.bytes", "1000000"),),
                        delete=("retention.ms",)),
        mc.CreatePartitions(name="orders", total=5),
        mc.AllocateProducerId(),
        mc.InitProducer(transactional_id="tx-1"),
        mc.InitProducer(producer_id=1, producer_epoch=0),
        mc.SetQuota(entity=quota, limits=((QuotaKind.PRODUCER_BYTE_RATE, 1000),
                                          (QuotaKind.REQUEST_RATE, 50))),
        mc.SetQuota(entity=QuotaEntity(user_default=True),
                    limits=((QuotaKind.CONSUMER_BYTE_RATE, 7),)),
        mc.RemoveQuota(entity=quota, kinds=(QuotaKind.REQUEST_RATE,)),
        _user("alice"),
        _user("bob"),
        _user("alice", mode="update"),
        mc.DeleteUser(name="bob"),
        mc.CreateAcls(acls=(_acl("User:alice", "orders"), _acl("User:bob", "orders"))),
        mc.DeleteAcls(acls=(_acl("User:bob", "orders"),)),
        mc.AlterPartitionReassignment(topic="orders", partition=0, target=(3, 1),
                                      throttle_bytes_per_s=1000),
        mc.AlterPartitionReassignment(topic="orders", partition=1, target=(2, 3, 1)),
        mc.CompletePartitionReassignment(topic_id=1, partition=1, target=(2, 3, 1)),
        mc.AddNode(node_id=4, address="127.0.0.1:4", peer_address="127.0.0.1:10004",
                   metadata_voter=True),
        mc.RegisterNode(node_id=4, address="127.0.0.1:4"),
        mc.AddNode(node_id=5, address="h5:9091", peer_address="h5:19091"),
        mc.DecommissionNode(node_id=5),
        mc.RemoveNode(node_id=5),
        mc.DecommissionNode(node_id=4),
        mc.RecommissionNode(node_id=4),
        mc.CreateTopic(name="bad name", partitions=1, replication_factor=1),  # refused
    ]


def replay(cmds: list[mc.Command], state: MetadataState | None = None,
           first: int = 0) -> MetadataState:
    """Apply through the wire form, as a node applies its log (record offset = index)."""
    state = state or MetadataState()
    for index, command in enumerate(cmds, start=first):
        state.apply_encoded(index, mc.encode_command(command))
    return state


def test_every_command_kind_is_exercised() -> None:
    """A command added to metadata_commands must be added to commands() here, so the round trip
    below covers the state it changes."""
    kinds = set(typing.get_args(mc.Command))
    missing = kinds - {type(c) for c in commands()}
    names = sorted(k.__name__ for k in missing)
    assert not missing, f"add a command of each kind to commands(): {names}"


def test_every_command_but_the_refused_one_takes_effect() -> None:
    state, cmds = MetadataState(), commands()
    errors = [(c, r) for i, c in enumerate(cmds)
              if "error" in (r := state.apply_encoded(i, mc.encode_command(c)))]
    assert [c for c, _ in errors] == [cmds[-1]], errors


def test_every_state_field_is_away_from_its_default() -> None:
    """Otherwise the round trip would not show that the field survives."""
    built, fresh = replay(commands()), MetadataState()
    same = [f.name for f in dataclasses.fields(MetadataState)
            if getattr(built, f.name) == getattr(fresh, f.name)]
    assert not same, f"commands() leaves these fields at their defaults: {same}"


@pytest.mark.parametrize("cut", range(len(commands()) + 1))
def test_snapshot_plus_tail_equals_the_full_replay(cut: int) -> None:
    """Snapshot after `cut` commands, load it, apply the rest: the same state as replaying all
    (every field compared, and the encodings byte-identical)."""
    cmds = commands()
    head = replay(cmds[:cut])
    data = encode_snapshot(MetadataSnapshot(index=cut - 1, term=3, state=head))
    loaded = decode_snapshot(data)
    assert (loaded.index, loaded.term) == (cut - 1, 3)
    assert loaded.state == head
    full = replay(cmds)
    resumed = replay(cmds[cut:], loaded.state, first=cut)
    for f in dataclasses.fields(MetadataState):
        assert getattr(resumed, f.name) == getattr(full, f.name), f.name
    assert encode_snapshot(MetadataSnapshot(index=0, term=0, state=resumed)) == \
        encode_snapshot(MetadataSnapshot(index=0, term=0, state=full))


def test_restore_replaces_the_state_in_place() -> None:
    target, source = MetadataState(), replay(commands())
    holder = target  # others (the node's parts) hold the object itself
    target.restore(decode_snapshot(encode_snapshot(
        MetadataSnapshot(index=99, term=1, state=source))).state)
    assert holder is target and holder == source


def _valid() -> bytes:
    return encode_snapshot(MetadataSnapshot(index=50, term=2, state=replay(commands())))


@pytest.mark.parametrize(("damage", "says"), [
    (lambda b: b[:-1] + bytes([b[-1] ^ 1]), "checksum mismatch"),
    (lambda b: b[:40], "the header says"),
    (lambda b: b"XXXX" + b[4:], "bad magic"),
    (lambda b: b[:4] + b"\x00\x09" + b[6:], "unknown snapshot version 9"),
    (lambda b: b[:10], "shorter than"),
])
def test_a_damaged_or_unknown_snapshot_is_refused_clearly(damage, says: str) -> None:
    with pytest.raises(SnapshotError, match=says):
        decode_snapshot(damage(_valid()))


def _reencoded(mutate) -> bytes:
    """A well-checksummed snapshot whose body was changed: what a buggy writer might produce."""
    import json
    import struct

    import xxhash

    body = json.loads(_valid()[18:])
    mutate(body)
    raw = json.dumps(body).encode()
    return struct.pack(">4sHQI", b"TLMS", 1, xxhash.xxh3_64_intdigest(raw), len(raw)) + raw


@pytest.mark.parametrize(("mutate", "says"), [
    (lambda d: d["state"].pop("users"), "exactly"),
    (lambda d: d["state"].update(extra=1), "exactly"),
    (lambda d: d["state"].update(next_topic_id="3"), "next_topic_id"),
    (lambda d: d["state"].update(next_topic_id=True), "next_topic_id"),
    (lambda d: d["state"]["quotas"][0][1].append(["no_such_rate", 1]), "QuotaKind"),
    (lambda d: d["state"]["users"][0][1].update(salt="zz"), "hex"),
    (lambda d: d["state"]["nodes"].append(d["state"]["nodes"][0]), "twice"),
    (lambda d: d.update(index=5), "beyond the snapshot index"),
])
def test_a_malformed_body_is_refused_and_nothing_is_half_loaded(mutate, says: str) -> None:
    with pytest.raises(SnapshotError, match=says):
        decode_snapshot(_reencoded(mutate))


def test_load_falls_back_to_the_older_snapshot_when_the_newest_is_damaged(tmp_path: Path,
                                                                         caplog) -> None:
    old, new = replay(commands()[:5]), replay(commands())
    write_snapshot_file(tmp_path, encode_snapshot(MetadataSnapshot(index=4, term=1, state=old)), 4)
    write_snapshot_file(tmp_path, encode_snapshot(MetadataSnapshot(index=50, term=1, state=new)),
                        50)
    assert load_newest(tmp_path, covers=3).state == new
    path = snapshot_path(tmp_path, 50)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x10
    path.write_bytes(bytes(data))
    loaded = load_newest(tmp_path, covers=3)
    assert loaded is not None and loaded.index == 4 and loaded.state == old
    assert "refusing metadata snapshot" in caplog.text and "checksum mismatch" in caplog.text
    # An unknown version inside a sound file is refused the same way.
    write_checksummed(path, b"TLMS\x00\x07" + bytes(12))
    assert load_newest(tmp_path, covers=3).index == 4
    assert "unknown snapshot version 7" in caplog.text
    # Nothing usable reaches the log start: None (the node then asks a peer).
    assert load_newest(tmp_path, covers=5) is None


def test_prune_keeps_the_newest_two(tmp_path: Path) -> None:
    for index in (3, 7, 11, 15):
        write_snapshot_file(tmp_path, encode_snapshot(
            MetadataSnapshot(index=index, term=1, state=MetadataState())), index)
    assert prune_snapshots(tmp_path) == [15, 11]
    assert list_snapshots(tmp_path) == [15, 11]
    assert prune_snapshots(tmp_path, below=12) == [15]


class _CutsPowerAt(SimFileSystem):
    """Raises at the k-th file-system change once armed; the test then cuts the power."""

    armed: int | None = None

    def _tick(self) -> None:
        if self.armed is not None:
            self.armed -= 1
            if self.armed < 0:
                self.armed = None
                raise _PowerCut

    def pwrite(self, fd, data, position):  # type: ignore[no-untyped-def]
        self._tick()
        return super().pwrite(fd, data, position)

    def fsync(self, fd):  # type: ignore[no-untyped-def]
        self._tick()
        super().fsync(fd)

    def fsync_directory(self, path):  # type: ignore[no-untyped-def]
        self._tick()
        super().fsync_directory(path)

    def replace(self, src, dst):  # type: ignore[no-untyped-def]
        self._tick()
        super().replace(src, dst)

    def unlink(self, path):  # type: ignore[no-untyped-def]
        self._tick()
        super().unlink(path)


class _PowerCut(Exception):
    pass


def test_power_loss_during_a_snapshot_write_leaves_the_old_or_the_new_one() -> None:
    """Cut the power at every file-system step of writing (and pruning after) a new snapshot,
    for several power-loss seeds: the newest loadable snapshot is always the old one or the new
    one, whole; and once the write returned, the new one survives."""
    old, new = replay(commands()[:6]), replay(commands())
    old_data = encode_snapshot(MetadataSnapshot(index=5, term=1, state=old))
    new_data = encode_snapshot(MetadataSnapshot(index=50, term=2, state=new))
    directory = Path("/data/metadata")
    seen = set()
    for seed in range(8):
        step = 0
        while True:
            fs = _CutsPowerAt(seed=seed)
            fs.mkdir(directory, parents=True)
            fs.fsync_directory(directory.parent)
            fs.fsync_directory(Path("/"))
            write_snapshot_file(directory, old_data, 5, fs=fs)
            fs.armed = step
            finished = cut = False
            try:
                write_snapshot_file(directory, new_data, 50, fs=fs)
                finished = True
                prune_snapshots(directory, fs=fs, keep=1)
            except _PowerCut:
                cut = True
            fs.armed = None
            fs.power_loss(random.Random(seed * 1000 + step))
            loaded = load_newest(directory, covers=5, fs=fs)
            assert loaded is not None, f"seed {seed} step {step}: no snapshot survived"
            assert (loaded.index, loaded.state) in ((5, old), (50, new)), (seed, step)
            if finished:
                assert loaded.index == 50, f"seed {seed} step {step}: a written snapshot was lost"
            seen.add(loaded.index)
            if not cut:  # the whole sequence ran: every step has been cut once
                break
            step += 1
    assert seen == {5, 50}
