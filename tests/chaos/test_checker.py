"""The chaos checker on crafted histories: one clean history, then one anomaly per test."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tidelog.chaos.checker import Checker, CheckerConfig, realtime_violations_naive
from tidelog.chaos.history import (
    ConsumerRead,
    CorruptValue,
    Event,
    FaultStart,
    FaultStop,
    FinalRead,
    FinalRecord,
    GroupCommit,
    History,
    LeaderObserved,
    ReplicaDigest,
    SendFailed,
    SendIndeterminate,
    SendInvoked,
    SendOk,
    decode_value,
    encode_value,
)
from tidelog.chaos.index import HistoryIndex, MalformedHistory
from tidelog.chaos.results import (
    CheckName,
    Results,
    RunVerdict,
    Verdict,
    render_summary,
    results_to_dict,
)


class H:
    """A tiny builder for crafted histories. Keys default to the producer id."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.keys: dict[tuple[str, int], str] = {}

    def invoke(self, producer: str, seq: int, t: float, key: str | None = None) -> H:
        key = key or producer
        self.keys[(producer, seq)] = key
        self.events.append(SendInvoked(producer=producer, seq=seq, key=key,
                                       value=encode_value(producer, seq), partition=None,
                                       time_ms=t))
        return self

    def ok(self, producer: str, seq: int, p: int, offset: int, t: float) -> H:
        self.events.append(SendOk(producer=producer, seq=seq, partition=p, offset=offset,
                                  time_ms=t))
        return self

    def send(self, producer: str, seq: int, p: int, offset: int, t: float,
             key: str | None = None, latency: float = 5.0) -> H:
        return self.invoke(producer, seq, t, key).ok(producer, seq, p, offset, t + latency)

    def read(self, consumer: str, p: int, offset: int, producer: str, seq: int, t: float,
             group: str | None = None, poll: int | None = None) -> H:
        self.events.append(ConsumerRead(
            consumer=consumer, group=group, partition=p, offset=offset,
            key=self.keys[(producer, seq)], value=encode_value(producer, seq), time_ms=t,
            poll=poll))
        return self

    def fault(self, start: float, stop: float, name: str = "kill-n1") -> H:
        self.events.append(FaultStart(name=name, targets=("n1",), time_ms=start))
        self.events.append(FaultStop(name=name, targets=("n1",), time_ms=stop))
        return self

    def digest(self, p: int, node: str, upto: int, digest: str | None,
               detail: str = "") -> H:
        self.events.append(ReplicaDigest(partition=p, node=node, upto_offset=upto,
                                         digest=digest, detail=detail, time_ms=20_000.0))
        return self

    def final(self, p: int, *records: tuple[int, str, int], t: float = 10_000.0) -> H:
        self.events.append(FinalRead(partition=p, time_ms=t, records=tuple(
            FinalRecord(offset=o, key=self.keys[(prod, seq)], value=encode_value(prod, seq))
            for o, prod, seq in records)))
        return self

    def add(self, event: Event) -> H:
        self.events.append(event)
        return self

    def check(self, config: CheckerConfig | None = None) -> Results:
        return Checker(config).check(History(tuple(self.events)))


# Crafted histories that judge one check, not whether a fault was injected.
NO_FAULTS_NEEDED = CheckerConfig(faults_required=False)


def _clean() -> H:
    h = H().fault(1.0, 2.0)
    h.send("a", 0, 0, 0, 0.0).send("a", 1, 0, 1, 10.0).send("b", 0, 1, 0, 5.0)
    h.read("c1", 0, 0, "a", 0, 20.0, group="g").read("c1", 0, 1, "a", 1, 21.0, group="g")
    h.add(GroupCommit(group="g", partition=0, offset=2, time_ms=22.0))
    return h.final(0, (0, "a", 0), (1, "a", 1)).final(1, (0, "b", 0))


def _failed(results: Results) -> set[CheckName]:
    return {c.name for c in results.checks if c.verdict is Verdict.FAIL}


# --- values -------------------------------------------------------------------------------------


def test_value_round_trips_and_pads() -> None:
    value = encode_value("p-1", 42, size_bytes=100)
    assert len(value) == 100
    decoded = decode_value(value)
    assert (decoded.producer, decoded.seq) == ("p-1", 42)


@pytest.mark.parametrize("damage", [
    lambda v: v[:-1] + ("0" if v[-1] != "0" else "1"),  # checksum digit
    lambda v: v.replace("|7|", "|8|"),  # sequence number
    lambda v: v.replace(".", ",", 1),  # padding byte
    lambda v: "hello",
    lambda v: v[:10],
])
def test_damaged_value_is_detected(damage) -> None:
    with pytest.raises(CorruptValue):
        decode_value(damage(encode_value("p", 7, size_bytes=40)))


# --- history serialization ----------------------------------------------------------------------


def test_history_round_trips_through_jsonl(tmp_path) -> None:
    h = _clean()
    h.add(SendFailed(producer="a", seq=9, error="x", time_ms=1.0))
    h.events.insert(0, SendInvoked(producer="a", seq=9, key="a", value=encode_value("a", 9),
                                   partition=3, time_ms=0.5))
    h.add(FaultStart(name="partition", targets=("n1", "n2"), time_ms=2.0))
    h.add(FaultStop(name="partition", targets=("n1", "n2"), time_ms=3.0))
    h.add(LeaderObserved(partition=0, leader=None, time_ms=4.0))
    history = History(tuple(h.events))
    path = tmp_path / "history.jsonl"
    history.dump(path)
    assert History.load(path) == history
    for line in path.read_text().splitlines():
        assert "type" in json.loads(line)


def test_malformed_history_line_names_the_line() -> None:
    with pytest.raises(ValueError, match="line 2"):
        History.from_jsonl('{"type": "fault_start", "name": "x", "targets": [], "time_ms": 1}\n'
                           '{"type": "nonsense"}\n')


def test_outcome_without_invocation_is_a_malformed_history() -> None:
    with pytest.raises(MalformedHistory):
        H().ok("a", 0, 0, 0, 1.0).check()


# --- the checks ---------------------------------------------------------------------------------


def test_clean_history_passes_every_check() -> None:
    results = _clean().check()
    assert results.valid, render_summary(results)
    assert _failed(results) == set()
    assert (results.acked, results.lost, results.duplicated, results.inconsistent) == (3, 0, 0, 0)
    assert results.operations.attempted == 3 and results.operations.ok == 3


def test_acknowledged_send_missing_from_final_read_is_lost() -> None:
    h = _clean()
    h.send("a", 2, 0, 2, 30.0)
    results = h.check()
    assert results.lost == 1
    assert _failed(results) == {CheckName.LOST}


def test_without_final_read_loss_is_unknown_not_pass() -> None:
    h = H().send("a", 0, 0, 0, 0.0)
    assert h.check().check(CheckName.LOST).verdict is Verdict.UNKNOWN


def test_one_position_read_with_two_values_is_inconsistent() -> None:
    h = _clean()
    h.invoke("b", 1, 40.0).read("c2", 0, 1, "b", 1, 50.0)  # offset 0@1 holds (a,1) finally
    results = h.check()
    assert results.inconsistent == 1
    assert CheckName.INCONSISTENT_OFFSETS in _failed(results)


def test_acked_offset_holding_another_value_is_inconsistent() -> None:
    h = H().fault(1.0, 2.0).send("a", 0, 0, 0, 0.0).send("b", 0, 0, 0, 10.0)  # both told 0
    h.final(0, (0, "a", 0), (1, "b", 0))
    results = h.check()
    assert results.check(CheckName.INCONSISTENT_OFFSETS).count("acked-offset-mismatch") == 1
    assert results.lost == 0
    assert _failed(results) == {CheckName.INCONSISTENT_OFFSETS}


def test_one_value_at_two_offsets_is_a_duplicate() -> None:
    h = H().send("a", 0, 0, 0, 0.0).send("a", 1, 0, 1, 10.0)
    h.final(0, (0, "a", 0), (1, "a", 1), (2, "a", 0))
    results = h.check()
    assert results.duplicated == 1
    # A duplicate of an earlier send is not also an ordering violation.
    assert _failed(results) == {CheckName.DUPLICATES}


def test_rereading_one_position_is_not_a_duplicate() -> None:
    h = _clean().read("c9", 0, 0, "a", 0, 60.0).read("c10", 0, 0, "a", 0, 61.0)
    assert h.check().duplicated == 0


def test_one_keys_values_out_of_send_order_is_an_order_violation() -> None:
    h = H().send("a", 0, 0, 1, 0.0, key="k").send("a", 1, 0, 0, 1.0, key="k", latency=20.0)
    h.final(0, (0, "a", 1), (1, "a", 0))
    results = h.check()
    assert results.check(CheckName.KEY_ORDER).count("out-of-order") == 1
    assert CheckName.KEY_ORDER in _failed(results)


def test_different_keys_may_interleave() -> None:
    h = H().send("a", 0, 0, 1, 0.0, key="k1").send("a", 1, 0, 0, 1.0, key="k2", latency=20.0)
    h.final(0, (0, "a", 1), (1, "a", 0))
    assert h.check().check(CheckName.KEY_ORDER).verdict is Verdict.PASS


def test_consumer_offsets_going_backwards_are_reported() -> None:
    h = _clean().read("c1", 0, 0, "a", 0, 30.0, group="g")
    results = h.check()
    assert results.check(CheckName.CONSUMER_ORDER).count("backward-steps") == 1
    assert _failed(results) == {CheckName.CONSUMER_ORDER}


def test_group_committing_past_what_it_was_given_skipped_records() -> None:
    h = H().send("a", 0, 0, 0, 0.0).send("a", 1, 0, 1, 1.0).send("a", 2, 0, 2, 2.0)
    h.read("c1", 0, 0, "a", 0, 10.0, group="g").read("c1", 0, 2, "a", 2, 11.0, group="g")
    h.add(GroupCommit(group="g", partition=0, offset=3, time_ms=12.0))
    h.final(0, (0, "a", 0), (1, "a", 1), (2, "a", 2))
    results = h.check()
    assert results.check(CheckName.GROUP_SKIPS).count("skipped") == 1
    assert CheckName.GROUP_SKIPS in _failed(results)


def test_group_reads_after_the_commit_do_not_excuse_it() -> None:
    h = H().send("a", 0, 0, 0, 0.0)
    h.add(GroupCommit(group="g", partition=0, offset=1, time_ms=5.0))
    h.read("c1", 0, 0, "a", 0, 10.0, group="g").final(0, (0, "a", 0))
    assert h.check().check(CheckName.GROUP_SKIPS).count("skipped") == 1


def test_indeterminate_writes_are_counted_as_appeared_or_not() -> None:
    h = H().send("a", 0, 0, 0, 0.0)
    for seq in (1, 2):
        h.invoke("a", seq, 30.0 + seq)
        h.add(SendIndeterminate(producer="a", seq=seq, error="timeout", time_ms=40.0 + seq))
    h.final(0, (0, "a", 0), (1, "a", 1))  # (a,1) made it; (a,2) did not
    results = h.check(NO_FAULTS_NEEDED)
    assert (results.recovered, results.unrecovered) == (1, 1)
    assert results.operations.indeterminate == 2
    assert results.check(CheckName.INDETERMINATE).verdict is Verdict.INFO
    assert results.valid


def test_definitely_failed_send_that_is_read_is_an_aborted_read() -> None:
    h = _clean()
    h.invoke("a", 2, 30.0).add(SendFailed(producer="a", seq=2, error="NOT_LEADER", time_ms=31.0))
    h.read("c7", 0, 2, "a", 2, 40.0)
    h.events = [e for e in h.events if not (isinstance(e, FinalRead) and e.partition == 0)]
    h.final(0, (0, "a", 0), (1, "a", 1), (2, "a", 2))
    results = h.check()
    assert results.aborted == 1
    assert _failed(results) == {CheckName.ABORTED_READS}


def test_send_acked_before_another_began_must_get_lower_offset() -> None:
    h = H().send("a", 0, 0, 5, 0.0, latency=1.0).send("b", 0, 0, 4, 10.0)
    h.final(0, (4, "b", 0), (5, "a", 0))
    results = h.check()
    assert results.check(CheckName.REALTIME_ORDER).count("violations") == 1
    assert CheckName.REALTIME_ORDER in _failed(results)


def test_concurrent_sends_may_take_either_order() -> None:
    h = H().send("a", 0, 0, 5, 0.0, latency=20.0).send("b", 0, 0, 4, 10.0)
    h.final(0, (4, "b", 0), (5, "a", 0))
    assert h.check().check(CheckName.REALTIME_ORDER).verdict is Verdict.PASS


def test_corrupt_and_phantom_values_fail_integrity() -> None:
    h = _clean()
    h.add(ConsumerRead(consumer="c", group=None, partition=1, offset=0, key="b",
                       value=encode_value("b", 0)[:-1] + "x", time_ms=70.0))
    h.add(ConsumerRead(consumer="c", group=None, partition=1, offset=1, key="z",
                       value=encode_value("zz", 3), time_ms=71.0))
    integrity = h.check().check(CheckName.INTEGRITY)
    assert (integrity.count("corrupt"), integrity.count("phantom")) == (1, 1)
    assert integrity.verdict is Verdict.FAIL


def _three_in_p0() -> H:
    """(a,0..2) at p0@0..2 and in the final read; a fault ran; no consumer reads yet."""
    h = H().fault(1.0, 2.0)
    for seq in range(3):
        h.send("a", seq, 0, seq, seq * 10.0)
    return h.final(0, *((o, "a", o) for o in range(3)))


def test_one_poll_that_jumps_over_a_record_is_an_internal_skip() -> None:
    h = _three_in_p0().read("c", 0, 0, "a", 0, 50.0, poll=0).read("c", 0, 2, "a", 2, 50.0, poll=0)
    results = h.check()
    skips = results.check(CheckName.INTERNAL_POLL_SKIPS)
    assert (skips.count("skips"), skips.count("skipped-records")) == (1, 1)
    assert "@0 then @2 in one poll" in skips.examples[0] and "first @1" in skips.examples[0]
    assert _failed(results) == {CheckName.INTERNAL_POLL_SKIPS}


def test_two_polls_that_jump_over_a_record_are_an_external_skip() -> None:
    h = _three_in_p0().read("c", 0, 0, "a", 0, 50.0, poll=0).read("c", 0, 2, "a", 2, 60.0, poll=1)
    results = h.check()
    assert results.check(CheckName.POLL_SKIPS).count("skips") == 1
    assert "between two polls (#0, #1)" in results.check(CheckName.POLL_SKIPS).examples[0]
    assert _failed(results) == {CheckName.POLL_SKIPS}


def test_contiguous_polls_and_gaps_over_control_batches_are_not_skips() -> None:
    # p0 holds data at 0, 1 and 3; offset 2 is a control batch (a leader's no-op) nobody reads.
    h = H().fault(1.0, 2.0)
    for seq, offset in enumerate((0, 1, 3)):
        h.send("a", seq, 0, offset, seq * 10.0)
    h.final(0, (0, "a", 0), (1, "a", 1), (3, "a", 2))
    h.read("c", 0, 0, "a", 0, 50.0, poll=0).read("c", 0, 1, "a", 1, 50.0, poll=0)
    h.read("c", 0, 3, "a", 2, 60.0, poll=1)
    results = h.check()
    assert results.valid, render_summary(results)
    assert results.check(CheckName.POLL_SKIPS).count("skips") == 0


def test_a_new_consumer_incarnation_may_resume_elsewhere() -> None:
    h = _three_in_p0().read("c.0", 0, 0, "a", 0, 50.0, poll=0)
    h.read("c.1", 0, 2, "a", 2, 60.0, poll=0)
    assert h.check().valid


def test_a_record_read_then_absent_from_the_final_read_is_lost_even_unacked() -> None:
    h = _three_in_p0()
    h.invoke("a", 3, 40.0).add(SendIndeterminate(producer="a", seq=3, error="timeout",
                                                   time_ms=80.0))
    h.read("c", 0, 3, "a", 3, 60.0, poll=0)  # a consumer was given it: it was committed
    h.invoke("a", 4, 41.0).add(SendIndeterminate(producer="a", seq=4, error="timeout",
                                                   time_ms=81.0))  # never seen: not lost
    results = h.check()
    lost = results.check(CheckName.LOST)
    assert (results.lost, lost.count("read-unacked-lost")) == (1, 1)
    assert lost.examples == ("(a,3) never acked but read by c at p0@3, t=60ms, absent from the "
                             "final read",)
    assert _failed(results) == {CheckName.LOST}


def test_one_producers_acks_going_backwards_on_a_partition_are_nonmonotonic() -> None:
    # Both in flight at once, so real-time order allows either; send order does not. Two keys,
    # so key-order has nothing to say: only this check sees it.
    h = H().fault(1.0, 2.0).invoke("a", 0, 0.0, key="k1").invoke("a", 1, 1.0, key="k2")
    h.ok("a", 1, 0, 0, 5.0).ok("a", 0, 0, 1, 6.0)
    h.send("a", 2, 1, 0, 10.0).send("b", 0, 0, 2, 10.0)
    h.final(0, (0, "a", 1), (1, "a", 0), (2, "b", 0)).final(1, (0, "a", 2))
    results = h.check()
    sends = results.check(CheckName.NONMONOTONIC_SENDS)
    assert sends.count("backward-acks") == 1
    assert sends.examples == ("p0: (a,1) acked @0 after (a,0) acked @1",)
    assert _failed(results) == {CheckName.NONMONOTONIC_SENDS}


def test_identical_replica_digests_pass() -> None:
    h = _clean()
    for node in ("n1", "n2", "n3"):
        h.digest(0, node, 2, "ab" * 16).digest(1, node, 1, "cd" * 16)
    results = h.check()
    replicas = results.check(CheckName.REPLICAS)
    assert replicas.verdict is Verdict.PASS and results.valid
    assert (replicas.count("partitions"), replicas.count("replicas")) == (2, 6)


def test_replicas_holding_different_committed_bytes_are_inconsistent() -> None:
    h = _clean().digest(0, "n1", 2, "ab" * 16).digest(0, "n2", 2, "ab" * 16)
    h.digest(0, "n3", 2, "ef" * 16).digest(1, "n1", 1, "cd" * 16).digest(1, "n2", 1, "cd" * 16)
    results = h.check()
    replicas = results.check(CheckName.REPLICAS)
    assert results.divergent == 1 and replicas.count("divergent") == 1
    assert replicas.examples[0].startswith("INCONSISTENT p0:")
    assert "n1,n2 [0,2)" in replicas.examples[0] and "n3 [0,2)" in replicas.examples[0]
    assert _failed(results) == {CheckName.REPLICAS}


def test_an_unreadable_replica_fails_rather_than_passes() -> None:
    h = _clean().digest(0, "n1", 2, "ab" * 16).digest(0, "n2", 2, None, "cannot open: torn")
    replicas = h.check().check(CheckName.REPLICAS)
    assert replicas.verdict is Verdict.FAIL and replicas.count("unreadable") == 1
    assert "n2 unreadable: cannot open: torn" in replicas.examples[0]


def test_without_digests_replica_consistency_is_unknown() -> None:
    assert _clean().check().check(CheckName.REPLICAS).verdict is Verdict.UNKNOWN


def test_no_acknowledged_write_is_a_vacuous_run_not_a_valid_one() -> None:
    h = H().fault(1.0, 2.0).invoke("a", 0, 0.0)
    h.add(SendIndeterminate(producer="a", seq=0, error="timeout", time_ms=9.0)).final(0)
    results = h.check()
    assert _failed(results) == set()
    assert results.verdict is RunVerdict.VACUOUS and not results.valid
    assert results.vacuous == ("0 acknowledged writes",)
    assert render_summary(results).startswith("verdict: INVALID (vacuous: 0 acknowledged writes")
    assert results_to_dict(results)["verdict"] == "vacuous"


def test_no_fault_executed_is_a_vacuous_run() -> None:
    h = _clean()
    h.events = [e for e in h.events if not isinstance(e, FaultStart | FaultStop)]
    results = h.check()
    assert results.verdict is RunVerdict.VACUOUS
    assert results.vacuous == ("0 faults executed (the nemesis did nothing)",)
    assert h.check(NO_FAULTS_NEEDED).verdict is RunVerdict.VALID


def test_an_anomaly_outranks_vacuity() -> None:
    h = H().send("a", 0, 0, 0, 0.0).final(0)  # no fault, and the one ack is lost
    results = h.check()
    assert results.vacuous and results.verdict is RunVerdict.INVALID
    assert render_summary(results).startswith("verdict: INVALID (failed: lost)")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 30), st.integers(0, 100),
                          st.integers(0, 50)), max_size=25))
def test_realtime_check_agrees_with_naive_oracle(sends) -> None:
    h = H()
    for seq, (p, offset, t, latency) in enumerate(sends):
        h.send("a", seq, p, offset, float(t), latency=float(latency))
    results = h.check()
    expected = realtime_violations_naive(HistoryIndex.build(History(tuple(h.events))))
    assert results.check(CheckName.REALTIME_ORDER).count("violations") == expected


# --- availability, recovery, latency ------------------------------------------------------------


def _faulted() -> H:
    h = H()
    for seq in range(10):  # healthy: acks every 100 ms
        h.send("a", seq, 0, seq, seq * 100.0, latency=2.0)
    h.add(FaultStart(name="isolate-n1", targets=("n1",), time_ms=1000.0))
    h.add(LeaderObserved(partition=0, leader=None, time_ms=1100.0))
    for seq in range(10, 15):  # invoked during the fault, acked after the heal
        h.invoke("a", seq, 1000.0 + (seq - 10) * 100)
    h.add(FaultStop(name="isolate-n1", targets=("n1",), time_ms=3000.0))
    h.add(LeaderObserved(partition=0, leader="n2", time_ms=3200.0))
    for seq in range(10, 15):
        h.ok("a", seq, 0, seq, 3500.0)
    for seq in range(15, 20):
        h.send("a", seq, 0, seq, 3600.0 + seq, latency=3.0)
    for seq in range(20):
        h.read("c", 0, seq, "a", seq, 3000.0 + seq * 50)
    return h.final(0, *((s, "a", s) for s in range(20)))


def test_availability_gap_and_leaderless_window() -> None:
    results = _faulted().check()
    assert results.valid, render_summary(results)
    (p0,) = results.availability
    assert [(g.start_ms, g.end_ms) for g in p0.gaps_without_ack] == [(902.0, 3500.0)]
    assert [(g.start_ms, g.end_ms) for g in p0.gaps_without_leader] == [(1100.0, 3200.0)]


def test_recovery_time_to_first_ack_and_consumers_caught_up() -> None:
    (rec,) = _faulted().check().recoveries
    assert rec.fault == "isolate-n1" and rec.healed_ms == 3000.0
    assert rec.first_ack_after_ms == 500.0
    # Offset 9 was the last acked by the heal; consumer c read it at 3000 + 9 * 50.
    assert rec.consumers_caught_up_after_ms == 450.0


def test_latency_is_split_into_phases_at_fault_edges() -> None:
    phases = _faulted().check().phases
    assert [p.faults for p in phases] == [(), ("isolate-n1",), ()]
    healthy, faulted, after = phases
    assert (healthy.invoked, healthy.acked, healthy.p50_ms, healthy.p999_ms) == (10, 10, 2.0, 2.0)
    assert faulted.invoked == 5 and faulted.p99_ms == 2500.0
    assert after.p50_ms == 3.0


def test_results_serialize_to_json_and_render_a_table() -> None:
    results = _faulted().check()
    data = json.loads(json.dumps(results_to_dict(results)))
    assert data["valid"] is True
    assert data["checks"][0]["verdict"] == "pass"
    assert data["checks"][1]["counts"] == {"acked": 20, "lost": 0, "read-unacked-lost": 0}
    assert data["verdict"] == "valid"
    text = render_summary(results)
    assert "verdict: VALID" in text and "isolate-n1" in text and "realtime-order" in text


def test_config_validates_its_bounds() -> None:
    with pytest.raises(ValueError):
        CheckerConfig(gap_without_ack_ms_min=0)
