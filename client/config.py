"""Client options as frozen dataclasses, validated when built (every option is documented in
docs/client.md; the defaults here are the source of truth)."""

from __future__ import annotations

from dataclasses import dataclass

from tidelog.client.errors import ConfigError
from tidelog.client.security import ClientSecurity

__all__ = ["AdminConfig", "ConsumerConfig", "ProducerConfig", "parse_bootstrap"]

KIB = 1024
MIB = 1024 * 1024
IDEMPOTENT_IN_FLIGHT_MAX = 5


def parse_bootstrap(bootstrap: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """'h1:p1,h2:p2' or a list of 'HOST:PORT' -> a tuple of addresses; raises ConfigError."""
    items = bootstrap.split(",") if isinstance(bootstrap, str) else list(bootstrap)
    addresses = tuple(item.strip() for item in items if item.strip())
    if not addresses:
        raise ConfigError("bootstrap: give at least one HOST:PORT (e.g. '127.0.0.1:9091')")
    for address in addresses:
        host, sep, port = address.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ConfigError(f"bootstrap: {address!r} is not HOST:PORT")
    return addresses


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


@dataclass(frozen=True, slots=True, kw_only=True)
class ProducerConfig:
    bootstrap: tuple[str, ...]
    security: ClientSecurity | None = None  # TLS and SCRAM (client/security.py)
    acks: str = "all"
    linger_ms: float = 5.0
    batch_size: int = 128 * KIB
    compression: str = "lz4"
    idempotent: bool = True
    max_in_flight: int = 5
    buffer_memory: int = 32 * MIB
    max_block_ms: int = 60_000
    retries: int = 2**31 - 1
    delivery_timeout_ms: int = 120_000
    request_timeout_ms: int = 30_000
    retry_backoff_ms: int = 100
    retry_backoff_ms_max: int = 1_000
    metadata_max_age_ms: int = 300_000
    partitioner: str = "xxh3"
    request_bytes_max: int = 8 * MIB
    client_id: str = ""  # sent on every call; quotas may be set per client id
    #: fail with ClusterUnreachable when no bootstrap address answered for this long
    bootstrap_timeout_s: float = 10.0
    #: at interpreter exit, an unclosed producer delivers for at most this long (close(timeout))
    exit_flush_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        _check(self.bootstrap_timeout_s > 0, "bootstrap_timeout_s must be > 0")
        _check(self.exit_flush_timeout_s >= 0, "exit_flush_timeout_s must be >= 0")
        _check(self.acks in ("all", "leader"), f"acks must be 'all' or 'leader', not {self.acks!r}")
        _check(self.linger_ms >= 0, "linger_ms must be >= 0")
        _check(self.batch_size > 0, "batch_size must be > 0")
        _check(self.compression in ("lz4", "none"),
               f"compression must be 'lz4' or 'none', not {self.compression!r}")
        _check(1 <= self.max_in_flight <= 64, "max_in_flight must be in 1..64")
        # The broker remembers the last 5 batches per producer and partition for deduplication
        # (node/producer_state.py RECENT_BATCHES_MAX); more in flight could not be deduplicated.
        _check(not self.idempotent or self.max_in_flight <= IDEMPOTENT_IN_FLIGHT_MAX,
               f"with idempotent=True, max_in_flight must be <= {IDEMPOTENT_IN_FLIGHT_MAX} "
               "(the broker's deduplication window)")
        _check(self.buffer_memory >= self.batch_size,
               f"buffer_memory ({self.buffer_memory}) must be >= batch_size ({self.batch_size})")
        _check(self.max_block_ms >= 0, "max_block_ms must be >= 0")
        _check(self.retries >= 0, "retries must be >= 0")
        _check(self.request_timeout_ms > 0, "request_timeout_ms must be > 0")
        _check(self.delivery_timeout_ms >= self.linger_ms + self.request_timeout_ms,
               f"delivery_timeout_ms ({self.delivery_timeout_ms}) must be >= linger_ms + "
               f"request_timeout_ms ({self.linger_ms + self.request_timeout_ms}), or every "
               "batch could expire before its first reply")
        _check(0 <= self.retry_backoff_ms <= self.retry_backoff_ms_max,
               "need 0 <= retry_backoff_ms <= retry_backoff_ms_max")
        from tidelog.client.partitioner import PARTITIONERS

        _check(self.partitioner in PARTITIONERS,
               f"partitioner must be one of {sorted(PARTITIONERS)}, not {self.partitioner!r}")
        _check(self.request_bytes_max >= 1024, "request_bytes_max must be >= 1024")


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsumerConfig:
    bootstrap: tuple[str, ...]
    security: ClientSecurity | None = None  # TLS and SCRAM (client/security.py)
    auto_offset_reset: str = "latest"
    fetch_max_wait_ms: int = 500
    fetch_min_bytes: int = 1
    fetch_max_bytes: int = 16 * MIB
    partition_fetch_bytes_max: int = 2 * MIB
    prefetch_bytes_max: int = 32 * MIB
    max_poll_records: int = 1000
    request_timeout_ms: int = 30_000
    retry_backoff_ms: int = 100
    metadata_max_age_ms: int = 300_000
    # consumer groups (docs/consumer-groups.md); all unused without group_id
    group_id: str | None = None
    enable_auto_commit: bool = True
    auto_commit_interval_ms: int = 5000
    session_timeout_ms: int = 45_000
    max_poll_interval_ms: int = 300_000
    group_assignor: str = ""  # uniform | range | sticky; empty: the group's (sticky by default)
    client_id: str = ""
    bootstrap_timeout_s: float = 10.0  # as ProducerConfig's

    def __post_init__(self) -> None:
        _check(self.bootstrap_timeout_s > 0, "bootstrap_timeout_s must be > 0")
        _check(self.group_id is None or 0 < len(self.group_id) <= 255,
               "group_id must be 1..255 characters")
        _check(self.auto_commit_interval_ms > 0, "auto_commit_interval_ms must be > 0")
        _check(1000 <= self.session_timeout_ms <= 3_600_000,
               "session_timeout_ms must be between 1000 and 3600000")
        _check(1000 <= self.max_poll_interval_ms <= 3_600_000,
               "max_poll_interval_ms must be between 1000 and 3600000")
        _check(self.group_assignor in ("", "uniform", "range", "sticky"),
               f"group_assignor must be 'uniform', 'range' or 'sticky', not "
               f"{self.group_assignor!r}")
        _check(self.auto_offset_reset in ("earliest", "latest", "error"),
               "auto_offset_reset must be 'earliest', 'latest' or 'error', "
               f"not {self.auto_offset_reset!r}")
        _check(0 <= self.fetch_max_wait_ms < self.request_timeout_ms,
               "need 0 <= fetch_max_wait_ms < request_timeout_ms (a long poll must end before "
               "its request times out)")
        _check(self.fetch_min_bytes >= 0, "fetch_min_bytes must be >= 0")
        _check(self.partition_fetch_bytes_max <= self.fetch_max_bytes,
               "partition_fetch_bytes_max must be <= fetch_max_bytes")
        _check(self.prefetch_bytes_max >= self.partition_fetch_bytes_max,
               "prefetch_bytes_max must be >= partition_fetch_bytes_max")
        _check(self.max_poll_records >= 1, "max_poll_records must be >= 1")


@dataclass(frozen=True, slots=True, kw_only=True)
class AdminConfig:
    bootstrap: tuple[str, ...]
    security: ClientSecurity | None = None  # TLS and SCRAM (client/security.py)
    request_timeout_ms: int = 30_000
    retry_backoff_ms: int = 100
    client_id: str = ""  # sent on every call; quotas may be set per client id
    bootstrap_timeout_s: float = 10.0  # as ProducerConfig's

    def __post_init__(self) -> None:
        _check(self.request_timeout_ms > 0, "request_timeout_ms must be > 0")
        _check(self.bootstrap_timeout_s > 0, "bootstrap_timeout_s must be > 0")
