"""Client quotas, sans-I/O: which quota applies to a caller, and how long to throttle it.

Theory of operation (Kafka's client quotas, KIP-13 / KIP-55 / KIP-219)
--------------------------------------------------------------------
Three kinds of quota (`QuotaKind`): produce bytes per second (the Produce request's batches),
fetch bytes per second (the Fetch response's batches) and requests per second (every call on the
client listener). A quota is set on an *entity* (`QuotaEntity`): a user (a principal, e.g.
`User:alice`), a client id (the `x-tidelog-client-id` a client sends), or both, each part either
named or `<default>`.

Precedence (`resolve`, Kafka's order, most specific first; per kind, the first entity in this
list that sets that kind wins):

    1. user + client-id          5. <default> user + <default> client-id
    2. user + <default> client-id 6. <default> user
    3. user                      7. client-id
    4. <default> user + client-id 8. <default> client-id

The usage is shared by everyone the matched entity names: a quota on `client-id=x` is one budget
for every connection that says `x` (whatever its user), one on `user=alice` is one budget for all
of alice's clients; a `<default>` part stands for each value on its own (every client id gets its
own `<default>` budget).

Rate: a sampled window like Kafka's `Rate` (`quota.window.num` = 11 samples of
`quota.window.size.seconds` = 1 s): the usage of the live samples divided by the time they span,
and that span is at least (samples - 1) sample lengths, so a new caller's first burst is measured
over a full window rather than over a few milliseconds.

Throttle time: when the rate O is above the quota Q over a window of W ms, the throttle is
`(O - Q) / Q * W` ms: the time during which, with no new usage, the rate over the grown window
falls back to exactly Q (`O * W / (W + T) = Q`). It is capped at `throttle_ms_max`.

Throttling (`QuotaTracker`): the broker answers at once with `throttle_time_ms` and *holds* that
entity's next requests of the same kind on this node until the throttle time has passed (Kafka
mutes the channel, KIP-219). A client that waits the throttle time out (ours does) is never held;
one that does not, or whose requests were already in flight, has its next answers delayed. Either
way nothing is dropped or failed: a held Produce is appended once the hold ends.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from tidelog.node.security.principal import Principal

__all__ = ["CLIENT_ID_CHARS_MAX", "CLIENT_ID_METADATA_KEY", "DEFAULT_NAME", "QUOTA_LIMIT_MAX",
           "QuotaEntity", "QuotaKind", "QuotaMatch", "QuotaTracker", "QuotaWindow",
           "SampledRate", "resolve", "throttle_ms"]

#: gRPC metadata key a client's id travels in (client/throttle.py sends the same key)
CLIENT_ID_METADATA_KEY = "x-tidelog-client-id"
CLIENT_ID_CHARS_MAX = 255
DEFAULT_NAME = "<default>"  # how a default part is written (Kafka writes it the same way)
QUOTA_LIMIT_MAX = 2**53  # bytes or requests per second; exact in a JSON number and a double


class QuotaKind(enum.Enum):
    PRODUCER_BYTE_RATE = "producer_byte_rate"  # bytes/s of Produce batches
    CONSUMER_BYTE_RATE = "consumer_byte_rate"  # bytes/s of Fetch response batches
    REQUEST_RATE = "request_rate"  # requests/s, every RPC on the client listener


@dataclass(frozen=True, slots=True, kw_only=True)
class QuotaEntity:
    """Who a quota is for. Each part is absent, named, or the default (never both)."""

    user: str = ""  # a principal, 'User:alice'; "" = the entity has no user part
    user_default: bool = False
    client_id: str = ""  # "" = no client-id part
    client_id_default: bool = False

    def __post_init__(self) -> None:
        if self.user and self.user_default:
            raise ValueError("a quota entity names a user or the default user, not both")
        if self.client_id and self.client_id_default:
            raise ValueError("a quota entity names a client id or the default client id, "
                             "not both")
        if not (self.has_user or self.has_client_id):
            raise ValueError("a quota entity needs a user, a client id, or a default of one")
        if self.user:
            Principal.parse(self.user)  # ValueError naming the accepted forms
        if len(self.client_id) > CLIENT_ID_CHARS_MAX:
            raise ValueError(f"client id of {len(self.client_id)} characters; the maximum is "
                             f"{CLIENT_ID_CHARS_MAX}")

    @property
    def has_user(self) -> bool:
        return bool(self.user) or self.user_default

    @property
    def has_client_id(self) -> bool:
        return bool(self.client_id) or self.client_id_default

    def __str__(self) -> str:
        parts = []
        if self.has_user:
            parts.append(f"user={DEFAULT_NAME if self.user_default else self.user}")
        if self.has_client_id:
            parts.append("client-id=" + (DEFAULT_NAME if self.client_id_default
                                         else self.client_id))
        return ", ".join(parts)


@dataclass(frozen=True, slots=True, kw_only=True)
class QuotaMatch:
    """The quota that applies to one caller for one kind, and whose usage it shares."""

    kind: QuotaKind
    entity: QuotaEntity
    limit: int  # per second
    #: the usage bucket: (kind, user or None, client id or None); None = not part of the entity
    key: tuple[QuotaKind, str | None, str | None]


Quotas = Mapping[QuotaEntity, Mapping[QuotaKind, int]]


def resolve(quotas: Quotas, principal: str, client_id: str, kind: QuotaKind
            ) -> QuotaMatch | None:
    """The quota of `kind` for this caller (Kafka's precedence, see the module doc), or None."""
    for entity in _candidates(principal, client_id):
        limit = quotas.get(entity, {}).get(kind)
        if limit is not None:
            key = (kind, principal if entity.has_user else None,
                   client_id if entity.has_client_id else None)
            return QuotaMatch(kind=kind, entity=entity, limit=limit, key=key)
    return None


def _candidates(principal: str, client_id: str) -> Iterator[QuotaEntity]:
    user = {"user": principal}
    default_user = {"user_default": True}
    clients: list[dict[str, object]] = ([{"client_id": client_id}] if client_id else [])
    clients.append({"client_id_default": True})
    for user_part in (user, default_user):
        for client_part in clients:
            yield QuotaEntity(**user_part, **client_part)  # type: ignore[arg-type]
        yield QuotaEntity(**user_part)  # type: ignore[arg-type]
    for client_part in clients:
        yield QuotaEntity(**client_part)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True, kw_only=True)
class QuotaWindow:
    """Kafka's quota.window.size.seconds (sample_ms) and quota.window.num (samples)."""

    sample_ms: int = 1000
    samples: int = 11

    def __post_init__(self) -> None:
        if not 1 <= self.sample_ms <= 60_000:
            raise ValueError(f"quota sample_ms must be in 1..60000, got {self.sample_ms}")
        if not 2 <= self.samples <= 100:
            raise ValueError(f"quota samples must be in 2..100, got {self.samples}")

    @property
    def throttle_ms_max(self) -> int:
        """No throttle is longer than the whole window (the usage it answers to is gone by
        then); this also keeps a hold well inside a client's 30 s request timeout."""
        return self.sample_ms * self.samples


@dataclass(slots=True)
class SampledRate:
    """Usage per second over the last `window.samples` samples (Kafka's Rate + SampledStat)."""

    window: QuotaWindow
    #: [start_ms, total] per sample, oldest first. Invariant: starts strictly increase.
    samples: deque[list[float]] = field(default_factory=deque)

    def record(self, amount: float, now_ms: float) -> None:
        self._purge(now_ms)
        if not self.samples or now_ms >= self.samples[-1][0] + self.window.sample_ms:
            self.samples.append([now_ms, 0.0])
            if len(self.samples) > self.window.samples:
                self.samples.popleft()
        self.samples[-1][1] += amount

    def window_ms(self, now_ms: float) -> float:
        """The span the rate is measured over: from the oldest live sample's start to now, at
        least (samples - 1) whole samples (Kafka's Rate.windowSize)."""
        self._purge(now_ms)
        elapsed = now_ms - self.samples[0][0] if self.samples else 0.0
        full = int(elapsed // self.window.sample_ms)
        if full < self.window.samples - 1:
            elapsed += (self.window.samples - 1 - full) * self.window.sample_ms
        return elapsed

    def rate(self, now_ms: float) -> float:
        """Per second."""
        window_ms = self.window_ms(now_ms)
        return sum(total for _, total in self.samples) * 1000.0 / window_ms

    def idle_since_ms(self) -> float:
        return self.samples[-1][0] if self.samples else float("-inf")

    def _purge(self, now_ms: float) -> None:
        expiry = self.window.samples * self.window.sample_ms
        while self.samples and now_ms - self.samples[0][0] >= expiry:
            self.samples.popleft()


def throttle_ms(rate: float, limit: float, window_ms: float, throttle_ms_max: int) -> int:
    """How long until `rate` over `window_ms` falls back to `limit` with no more usage:
    (rate - limit) / limit * window, rounded up, capped; 0 when not over."""
    assert limit > 0, limit
    if rate <= limit:
        return 0
    exact = (rate - limit) / limit * window_ms
    return min(throttle_ms_max, int(-(-exact // 1)))


class QuotaTracker:
    """The usage of every quota bucket on this node, and how long each is held.

    Time comes in as `now_ms` (any monotonic clock); nothing here sleeps. Bounded: a bucket idle
    for a whole window holds no usage and no hold, and is forgotten (`buckets_max` caps the
    rest: past it the longest idle buckets are forgotten first)."""

    def __init__(self, window: QuotaWindow | None = None, *, buckets_max: int = 100_000) -> None:
        self.window = window or QuotaWindow()
        self._buckets_max = buckets_max
        self._rates: dict[tuple[QuotaKind, str | None, str | None], SampledRate] = {}
        self._held_until_ms: dict[tuple[QuotaKind, str | None, str | None], float] = {}
        self._records = 0

    def hold_ms(self, matches: list[QuotaMatch], now_ms: float) -> float:
        """How long to hold a request before serving it: the longest hold of its buckets."""
        return max((self._held_until_ms.get(m.key, now_ms) - now_ms for m in matches),
                   default=0.0) if matches else 0.0

    def record(self, match: QuotaMatch, amount: float, now_ms: float) -> None:
        """Count usage (bytes or one request) against the match's bucket."""
        rate = self._rates.get(match.key)
        if rate is None:
            rate = self._rates[match.key] = SampledRate(self.window)
        rate.record(amount, now_ms)
        self._records += 1
        if self._records % 1024 == 0 or len(self._rates) > self._buckets_max:
            self._forget_idle(now_ms)

    def throttle(self, match: QuotaMatch, now_ms: float) -> int:
        """The bucket's throttle time now; a positive one also holds the bucket's next requests
        on this node until it has passed."""
        rate = self._rates.get(match.key)
        if rate is None:
            return 0
        ms = throttle_ms(rate.rate(now_ms), match.limit, rate.window_ms(now_ms),
                         self.window.throttle_ms_max)
        if ms > 0:
            until = now_ms + ms
            if until > self._held_until_ms.get(match.key, float("-inf")):
                self._held_until_ms[match.key] = until
        return ms

    def rate(self, key: tuple[QuotaKind, str | None, str | None], now_ms: float) -> float:
        rate = self._rates.get(key)
        return rate.rate(now_ms) if rate is not None else 0.0

    def __len__(self) -> int:
        return len(self._rates)

    def _forget_idle(self, now_ms: float) -> None:
        horizon = now_ms - self.window.throttle_ms_max
        for key in [k for k, r in self._rates.items() if r.idle_since_ms() < horizon
                    and self._held_until_ms.get(k, float("-inf")) < now_ms]:
            del self._rates[key]
            self._held_until_ms.pop(key, None)
        if len(self._rates) > self._buckets_max:
            by_idle = sorted(self._rates, key=lambda k: self._rates[k].idle_since_ms())
            for key in by_idle[: len(self._rates) - self._buckets_max]:
                del self._rates[key]
                self._held_until_ms.pop(key, None)
