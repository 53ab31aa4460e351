"""The sync Consumer's subscription state: which partitions it reads and from where.

Split out of consumer.py (issue 15; aiokafka's SubscriptionState). The per-partition state
itself (position, fetch offset, paused, buffers) lives in the Fetcher's `states`
(tidelog.client.fetcher.PartitionFetchState), one dict both sides share; this module is the
consumer-facing view of it: checked assignment, pause/resume, and positions resolved by
ListOffsets (seek_to_*, auto_offset_reset, out-of-range replies).

Not thread-safe by itself: the Consumer calls it under its lock.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping

from tidelog.client import errors, offsets
from tidelog.client.config import ConsumerConfig
from tidelog.client.connection import Connections
from tidelog.client.fetcher import Fetcher, PartitionFetchState
from tidelog.client.metadata import Metadata
from tidelog.client.records import TopicPartition

__all__ = ["SubscriptionState"]


class SubscriptionState:
    """Assigned partitions and their positions, over the Fetcher's per-partition states."""

    def __init__(self, config: ConsumerConfig, metadata: Metadata, connections: Connections,
                 fetcher: Fetcher) -> None:
        self._config = config
        self._metadata = metadata
        self._connections = connections
        self._fetcher = fetcher

    # --- assignment ------------------------------------------------------------------------------

    def assignment(self) -> set[TopicPartition]:
        return set(self._fetcher.states)

    def assign_checked(self, tps: list[TopicPartition]) -> None:
        """Read exactly `tps`; TopicNotFound for a topic or partition that does not exist."""
        for tp in tps:
            description = self._metadata.topic(
                tp.topic, timeout_s=self._config.request_timeout_ms / 1000)
            if not 0 <= tp.partition < len(description.partitions):
                raise errors.TopicNotFound(
                    f"{tp}: topic {tp.topic!r} has partitions "
                    f"0..{len(description.partitions) - 1}")
        self._fetcher.assign(tps)

    def state(self, tp: TopicPartition) -> PartitionFetchState:
        st = self._fetcher.states.get(tp)
        if st is None:
            raise errors.TidelogError(f"{tp} is not assigned to this consumer; assign() it first")
        return st

    def set_paused(self, partitions: Iterable[TopicPartition], paused: bool) -> None:
        for tp in partitions:
            self.state(tp).paused = paused

    def paused(self) -> set[TopicPartition]:
        return {tp for tp, st in self._fetcher.states.items() if st.paused}

    # --- positions -------------------------------------------------------------------------------

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.state(tp)
        self._fetcher.seek(tp, offset)

    def position(self, tp: TopicPartition) -> int:
        st = self.state(tp)
        if st.position is None:
            self.reset_positions([tp])
        assert st.position is not None
        return st.position

    def list_offsets(self, specs: Mapping[TopicPartition, tuple[int, int]],
                     timeout_s: float | None = None) -> dict[TopicPartition, int]:
        """ListOffsets at the leaders: {tp: (spec, timestamp_ms)} -> {tp: offset} (I/O)."""
        return offsets.list_offsets(
            self._metadata, self._connections, specs,
            timeout_s=self._config.request_timeout_ms / 1000 if timeout_s is None else timeout_s,
            backoff_s=self._config.retry_backoff_ms / 1000)

    def seek_to(self, partitions: Iterable[TopicPartition] | None, spec: int) -> None:
        tps = list(self._fetcher.states) if partitions is None else list(partitions)
        for tp in tps:
            self.state(tp)
        for tp, offset in self.list_offsets({tp: (spec, 0) for tp in tps}).items():
            self._fetcher.seek(tp, offset)

    def reset_unknown(self, deadline: float) -> None:
        """Resolve the positions still unknown (new partitions), within poll's deadline."""
        unknown = [tp for tp, st in self._fetcher.states.items() if st.position is None]
        if unknown:
            self.reset_positions(unknown, deadline=deadline)

    def reset_positions(self, tps: list[TopicPartition], *,
                        deadline: float | None = None) -> None:
        """Resolve positions by auto_offset_reset. With a `deadline` (poll's), a ListOffsets
        that cannot finish by then is left for the next poll instead of overrunning it."""
        policy = self._config.auto_offset_reset
        if policy == "error":
            raise errors.OffsetOutOfRange(
                f"no position for {', '.join(map(str, tps))}: call seek(), seek_to_beginning() "
                "or seek_to_end() first, or set auto_offset_reset to 'earliest' or 'latest'")
        spec = offsets.EARLIEST if policy == "earliest" else offsets.LATEST
        timeout_s = None if deadline is None else max(0.05, deadline - time.monotonic())
        try:
            found = self.list_offsets({tp: (spec, 0) for tp in tps}, timeout_s)
        except errors.Timeout:
            if deadline is None:
                raise
            return  # still unknown: the next poll tries again
        for tp, offset in found.items():
            self._fetcher.seek(tp, offset)

    def handle_out_of_range(self, deadline: float | None = None) -> None:
        """Partitions whose fetch said OFFSET_OUT_OF_RANGE: raise (policy 'error') or reset."""
        bad = self._fetcher.out_of_range()
        if not bad:
            return
        if self._config.auto_offset_reset == "error":
            raise bad[0][1]
        self.reset_positions([tp for tp, _ in bad], deadline=deadline)

    # --- metrics ---------------------------------------------------------------------------------

    def lag(self) -> dict[str, int]:
        """"topic/partition" -> records between the position and the last high watermark seen
        (no lock needed: assign() replaces the states dict, never edits it)."""
        lag: dict[str, int] = {}
        for tp, st in list(self._fetcher.states.items()):
            position, high_watermark = st.position, st.high_watermark
            if position is not None and high_watermark >= 0:
                lag[f"{tp.topic}/{tp.partition}"] = max(0, high_watermark - position)
        return lag
