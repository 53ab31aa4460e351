"""Producer delivery rules (tidelog.client.delivery): sequences, window, ordered retries."""

from __future__ import annotations

from tidelog.client import errors
from tidelog.client.accumulator import ProducerBatch
from tidelog.client.delivery import DeliveryState
from tidelog.client.records import TopicPartition

TP = TopicPartition("t", 0)
TP1 = TopicPartition("t", 1)


def state(**overrides: object) -> DeliveryState:
    options: dict[str, object] = dict(idempotent=True, max_in_flight=3, retries=10,
                                      retry_backoff_ms=100, retry_backoff_ms_max=1000)
    options.update(overrides)
    ds = DeliveryState(**options)  # type: ignore[arg-type]
    ds.set_producer_id(7, 0)
    return ds


def batch(tp: TopicPartition = TP, records: int = 1, created: float = 0.0) -> ProducerBatch:
    b = ProducerBatch(tp, created, created + 100.0)
    b.records = [(None, b"v", (), 1)] * records
    return b


def send_new(ds: DeliveryState, b: ProducerBatch, now: float = 0.0) -> ProducerBatch:
    assert ds.can_send_new(b.tp, now)
    ds.assign(b)
    ds.sent(b)
    return b


def test_sequences_advance_by_record_count_per_partition() -> None:
    ds = state()
    a = send_new(ds, batch(records=3))
    ds.succeeded(a)
    b = send_new(ds, batch(records=2))
    c = send_new(ds, batch(TP1, records=4))
    assert (a.base_sequence, b.base_sequence, c.base_sequence) == (0, 3, 0)
    assert a.producer_id == b.producer_id == 7 and a.producer_epoch == 0


def test_non_idempotent_batches_carry_no_sequence() -> None:
    ds = state(idempotent=False)
    a = send_new(ds, batch())
    assert a.base_sequence == -1 and a.producer_id == -1


def test_no_new_batch_before_a_producer_id() -> None:
    ds = DeliveryState(idempotent=True, max_in_flight=5, retries=1, retry_backoff_ms=1,
                       retry_backoff_ms_max=1)
    assert not ds.can_send_new(TP, 0.0)


def warm(ds: DeliveryState, tp: TopicPartition = TP) -> None:
    """Send and ack a first batch: later ones may then be pipelined."""
    ds.succeeded(send_new(ds, batch(tp)))


def test_the_first_batch_under_a_producer_id_travels_alone() -> None:
    ds = state()
    first = send_new(ds, batch())
    assert not ds.can_send_new(TP, 0.0)
    ds.succeeded(first)
    send_new(ds, batch())
    assert ds.can_send_new(TP, 0.0)


def test_window_caps_batches_in_flight_per_partition() -> None:
    ds = state(max_in_flight=2)
    warm(ds)
    send_new(ds, batch())
    send_new(ds, batch())
    assert not ds.can_send_new(TP, 0.0)
    assert ds.can_send_new(TP1, 0.0)


def test_retriable_failure_stops_new_sends_and_resends_in_sequence_order() -> None:
    ds = state()
    warm(ds)
    a, b, c = (send_new(ds, batch()) for _ in range(3))
    # replies arrive out of order: c then a fail, b is still in flight
    assert ds.failed(c, errors.NotLeader("moved"), now=1.0) == []
    assert ds.failed(a, errors.NotLeader("moved"), now=1.0) == []
    assert not ds.can_send_new(TP, 5.0)
    assert ds.next_retry(TP, 5.0) is None  # b still in flight: wait for it
    assert ds.failed(b, errors.NodeUnavailable("down"), now=1.0) == []
    assert ds.next_retry(TP, 1.05) is None  # backoff
    resent = []
    for _ in range(3):
        r = ds.next_retry(TP, 5.0)
        assert r is not None
        ds.sent(r)
        assert ds.next_retry(TP, 5.0) is None  # one at a time
        resent.append(r.base_sequence)
        ds.succeeded(r)
    assert resent == [1, 2, 3]
    assert ds.can_send_new(TP, 5.0)
    d = send_new(ds, batch(), now=5.0)
    assert d.base_sequence == 4  # retries never renumber


def test_out_of_order_sequence_is_retriable_only_behind_an_unacked_batch() -> None:
    ds = state()
    warm(ds)
    a = send_new(ds, batch())
    b = send_new(ds, batch())
    # b overtook a on the wire: the broker saw a gap
    assert ds.failed(b, errors.OutOfOrderSequence("gap"), now=1.0) == []
    ds.succeeded(a)
    r = ds.next_retry(TP, 5.0)
    assert r is b
    ds.sent(b)
    # now nothing earlier is outstanding: a gap is fatal for b
    failures = ds.failed(b, errors.OutOfOrderSequence("gap"), now=5.0)
    assert [f[0] for f in failures] == [b]
    assert ds.needs_new_producer_id


def test_fatal_failure_abandons_queued_retries_and_waits_for_a_new_producer_id() -> None:
    ds = state()
    warm(ds)
    a, b, c = (send_new(ds, batch()) for _ in range(3))
    assert ds.failed(b, errors.NotLeader("x"), now=1.0) == []
    failures = ds.failed(a, errors.MessageTooLarge("big"), now=1.0)
    failed = {f[0].base_sequence: f[1] for f in failures}
    assert set(failed) == {1, 2}
    assert isinstance(failed[1], errors.MessageTooLarge)
    assert isinstance(failed[2], errors.OutOfOrderSequence) and "sequence 1" in str(failed[2])
    # c is still in flight: it finishes, with no retry
    assert [f[0] for f in ds.failed(c, errors.NotLeader("x"), now=1.0)] == [c]
    assert not ds.can_send_new(TP, 9.0)  # same producer id is retired for TP
    assert ds.can_send_new(TP1, 9.0)  # other partitions carry on
    ds.set_producer_id(8, 0)
    d = send_new(ds, batch(), now=9.0)
    assert (d.producer_id, d.base_sequence) == (8, 0)


def test_new_producer_id_is_adopted_only_when_the_partition_is_idle() -> None:
    ds = state()
    a = send_new(ds, batch(TP1))
    ds.set_producer_id(8, 0)
    assert not ds.can_send_new(TP1, 0.0)  # a (pid 7) still in flight
    ds.succeeded(a)
    b = send_new(ds, batch(TP1))
    assert (b.producer_id, b.base_sequence) == (8, 0)


def test_retries_are_bounded_by_count_and_deadline() -> None:
    ds = state(retries=1)
    a = send_new(ds, batch())
    assert ds.failed(a, errors.NotLeader("x"), now=1.0) == []
    r = ds.next_retry(TP, 5.0)
    assert r is a
    ds.sent(a)
    assert [f[0] for f in ds.failed(a, errors.NotLeader("x"), now=5.0)] == [a]

    ds2 = state()
    late = send_new(ds2, batch(created=0.0))
    assert [f[0] for f in ds2.failed(late, errors.NotLeader("x"), now=100.0)] == [late]


def test_queued_retry_expires_with_a_clear_timeout() -> None:
    ds = state()
    warm(ds)
    a = send_new(ds, batch())
    b = send_new(ds, batch())
    ds.failed(a, errors.Timeout("slow"), now=1.0)
    ds.failed(b, errors.Timeout("slow"), now=1.0)
    failures = ds.expire(now=100.0)
    assert [f[0] for f in failures] == [a, b]
    assert "may or may not have been written" in str(failures[0][1])


def test_out_of_order_is_retriable_when_the_earlier_ack_was_handled_first() -> None:
    """The broker saw b before a; a's success reply is handled before b's OOO error reply."""
    ds = state()
    warm(ds)
    a = send_new(ds, batch())
    b = send_new(ds, batch())
    ds.succeeded(a)
    assert ds.failed(b, errors.OutOfOrderSequence("gap"), now=1.0) == []
    assert ds.next_retry(TP, 5.0) is b
