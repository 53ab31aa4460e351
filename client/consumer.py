"""The Consumer: read records of manually assigned partitions.

Consumer groups (``subscribe``, committed offsets) are a later issue; the seam is that the fetcher
only needs an assignment and a position per partition, which a group coordinator will provide
through ``assign`` and ``seek`` just like a user does now.

Thread-safety: every public method takes one lock, so a consumer may be shared between threads,
but records are handed out once: two threads polling the same consumer split the stream.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from types import TracebackType

from tidelog.client import errors, offsets
from tidelog.client.config import ConsumerConfig, parse_bootstrap
from tidelog.client.connection import Connections
from tidelog.client.fetcher import Fetcher
from tidelog.client.metadata import Metadata
from tidelog.client.records import ConsumerRecord, TopicPartition

__all__ = ["Consumer"]

_SLICE_S = 0.1  # poll() re-checks metadata and out-of-range partitions this often while waiting


class Consumer:
    """Read records from assigned partitions.

    >>> with Consumer("127.0.0.1:9091", auto_offset_reset="earliest") as consumer:
    ...     consumer.assign([TopicPartition("events", 0)])
    ...     for record in consumer.poll(timeout_s=1.0):
    ...         print(record.offset, record.value)
    """

    def __init__(
        self,
        bootstrap: str | Sequence[str],
        *,
        auto_offset_reset: str = "latest",
        fetch_max_wait_ms: int = 500,
        fetch_min_bytes: int = 1,
        fetch_max_bytes: int = 16 * 1024 * 1024,
        partition_fetch_bytes_max: int = 2 * 1024 * 1024,
        prefetch_bytes_max: int = 32 * 1024 * 1024,
        max_poll_records: int = 1000,
        request_timeout_ms: int = 30_000,
        retry_backoff_ms: int = 100,
        metadata_max_age_ms: int = 300_000,
    ) -> None:
        self.config = ConsumerConfig(
            bootstrap=parse_bootstrap(bootstrap), auto_offset_reset=auto_offset_reset,
            fetch_max_wait_ms=fetch_max_wait_ms, fetch_min_bytes=fetch_min_bytes,
            fetch_max_bytes=fetch_max_bytes, partition_fetch_bytes_max=partition_fetch_bytes_max,
            prefetch_bytes_max=prefetch_bytes_max, max_poll_records=max_poll_records,
            request_timeout_ms=request_timeout_ms, retry_backoff_ms=retry_backoff_ms,
            metadata_max_age_ms=metadata_max_age_ms,
        )
        self._connections = Connections()
        self._metadata = Metadata(
            self._connections, self.config.bootstrap,
            request_timeout_ms=request_timeout_ms, max_age_ms=metadata_max_age_ms,
            retry_backoff_ms=retry_backoff_ms,
        )
        self._fetcher = Fetcher(self.config, self._metadata, self._connections)
        self._lock = threading.RLock()
        self._closed = False

    # --- assignment -----------------------------------------------------------------------------

    def assign(self, partitions: Iterable[TopicPartition]) -> None:
        """Read exactly these partitions (replacing any earlier assignment). Positions start
        unknown and are set by seek*/auto_offset_reset. Raises TopicNotFound for a bad one."""
        tps = list(partitions)
        with self._lock:
            self._check_open()
            for tp in tps:
                description = self._metadata.topic(
                    tp.topic, timeout_s=self.config.request_timeout_ms / 1000)
                if not 0 <= tp.partition < len(description.partitions):
                    raise errors.TopicNotFound(
                        f"{tp}: topic {tp.topic!r} has partitions "
                        f"0..{len(description.partitions) - 1}")
            self._fetcher.assign(tps)

    def assignment(self) -> set[TopicPartition]:
        with self._lock:
            return set(self._fetcher.states)

    def partitions_for(self, topic: str) -> list[TopicPartition]:
        with self._lock:
            description = self._metadata.topic(
                topic, timeout_s=self.config.request_timeout_ms / 1000)
        return [TopicPartition(topic, p.partition) for p in description.partitions]

    def subscribe(self, topics: Sequence[str]) -> None:
        raise NotImplementedError("consumer groups are not implemented yet; use assign()")

    # --- positions -------------------------------------------------------------------------------

    def seek(self, tp: TopicPartition, offset: int) -> None:
        """The next poll returns records of tp from `offset`. An offset outside [log start, high
        watermark] is detected by the next fetch and handled by auto_offset_reset ('error' raises
        OffsetOutOfRange from poll)."""
        if offset < 0:
            raise errors.OffsetOutOfRange(f"{tp}: offset must be >= 0, not {offset}",
                                          topic=tp.topic, partition=tp.partition, offset=offset)
        with self._lock:
            self._state(tp)
            self._fetcher.seek(tp, offset)

    def seek_to_beginning(self, partitions: Iterable[TopicPartition] | None = None) -> None:
        self._seek_to(partitions, offsets.EARLIEST)

    def seek_to_end(self, partitions: Iterable[TopicPartition] | None = None) -> None:
        self._seek_to(partitions, offsets.LATEST)

    def position(self, tp: TopicPartition) -> int:
        """The offset of the next record poll() will return for tp (resolving it if unknown)."""
        with self._lock:
            st = self._state(tp)
            if st.position is None:
                self._reset_positions([tp])
            assert st.position is not None
            return st.position

    def offsets_for_times(
        self, timestamps: Mapping[TopicPartition, int]
    ) -> dict[TopicPartition, int | None]:
        """For each partition, the first offset whose timestamp is >= the given ms since the
        epoch, or None when there is no such record."""
        with self._lock:
            found = self._list({tp: (offsets.TIMESTAMP, ts) for tp, ts in timestamps.items()})
        return {tp: (None if offset < 0 else offset) for tp, offset in found.items()}

    def beginning_offsets(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        with self._lock:
            return self._list({tp: (offsets.EARLIEST, 0) for tp in partitions})

    def end_offsets(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """The high watermark of each partition: the offset the next committed record gets."""
        with self._lock:
            return self._list({tp: (offsets.LATEST, 0) for tp in partitions})

    def pause(self, *partitions: TopicPartition) -> None:
        """Stop fetching and returning these partitions (their buffered records are kept)."""
        with self._lock:
            for tp in partitions:
                self._state(tp).paused = True

    def resume(self, *partitions: TopicPartition) -> None:
        with self._lock:
            for tp in partitions:
                self._state(tp).paused = False

    def paused(self) -> set[TopicPartition]:
        with self._lock:
            return {tp for tp, st in self._fetcher.states.items() if st.paused}

    # --- reading --------------------------------------------------------------------------------

    def poll(self, timeout_s: float = 1.0, max_records: int | None = None) -> list[ConsumerRecord]:
        """Records from the assigned, unpaused partitions, waiting up to timeout_s for some.

        Returns [] on timeout. Per partition, records come in offset order and each is returned
        once; poll moves the position past what it returns. Raises OffsetOutOfRange when a
        position is outside the log and auto_offset_reset='error'."""
        limit = max_records or self.config.max_poll_records
        deadline = time.monotonic() + max(0.0, timeout_s)
        with self._lock:
            self._check_open()
            unknown = [tp for tp, st in self._fetcher.states.items() if st.position is None]
            if unknown:
                self._reset_positions(unknown)
            while True:
                self._fetcher.handle_replies()
                self._handle_out_of_range()
                records = self._fetcher.take(limit)
                stale = self._metadata.stale_topics()
                if stale:
                    # a failure is retried on the next round; fetches wait for a leader
                    with contextlib.suppress(errors.TidelogError):
                        self._metadata.refresh(stale)
                self._fetcher.send_fetches()  # prefetch while the caller works on `records`
                if records:
                    return records
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                self._fetcher.wait(min(remaining, _SLICE_S))

    def __iter__(self) -> Iterator[ConsumerRecord]:
        """Yield records forever (until close()); each poll waits up to 1 s."""
        while not self._closed:
            yield from self.poll(timeout_s=1.0)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._fetcher.close()
            self._connections.close()

    def __enter__(self) -> Consumer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- helpers -----------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise errors.ClientClosed("the consumer is closed")

    def _state(self, tp: TopicPartition):  # noqa: ANN202 - PartitionFetchState
        st = self._fetcher.states.get(tp)
        if st is None:
            raise errors.TidelogError(f"{tp} is not assigned to this consumer; assign() it first")
        return st

    def _list(self, specs: dict[TopicPartition, tuple[int, int]]) -> dict[TopicPartition, int]:
        self._check_open()
        return offsets.list_offsets(
            self._metadata, self._connections, specs,
            timeout_s=self.config.request_timeout_ms / 1000,
            backoff_s=self.config.retry_backoff_ms / 1000)

    def _seek_to(self, partitions: Iterable[TopicPartition] | None, spec: int) -> None:
        with self._lock:
            tps = list(self._fetcher.states) if partitions is None else list(partitions)
            for tp in tps:
                self._state(tp)
            for tp, offset in self._list({tp: (spec, 0) for tp in tps}).items():
                self._fetcher.seek(tp, offset)

    def _reset_positions(self, tps: list[TopicPartition]) -> None:
        policy = self.config.auto_offset_reset
        if policy == "error":
            raise errors.OffsetOutOfRange(
                f"no position for {', '.join(map(str, tps))}: call seek(), seek_to_beginning() "
                "or seek_to_end() first, or set auto_offset_reset to 'earliest' or 'latest'")
        spec = offsets.EARLIEST if policy == "earliest" else offsets.LATEST
        for tp, offset in self._list({tp: (spec, 0) for tp in tps}).items():
            self._fetcher.seek(tp, offset)

    def _handle_out_of_range(self) -> None:
        bad = self._fetcher.out_of_range()
        if not bad:
            return
        if self.config.auto_offset_reset == "error":
            raise bad[0][1]
        self._reset_positions([tp for tp, _ in bad])
