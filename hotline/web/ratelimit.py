"""Small in-process rate limits for the web layer: a token bucket per key, a daily budget per
key, and a lockout after repeated failures per key.

Reusable by any route (HashCheck per API key, sign-in and bearer tokens per client address).
State lives in the web process's memory: it is lost on restart and not shared between web
processes, so with N web processes a key gets up to N times the limit. That is the trade
chosen for now (no database write per request); the limits are a brake on abuse, not
accounting. Every structure holds at most ``max_keys`` keys (the oldest are dropped first), so
a caller inventing keys cannot grow the process's memory.
"""

from __future__ import annotations

import ipaddress
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

Clock = Callable[[], float]


def client_key(host: str | None) -> str:
    """The key a client address counts against: an IPv4 address, or an IPv6 /64 (one
    subscriber usually has a whole /64; counting single addresses would let one machine
    rotate through them). IPv4-mapped IPv6 counts as the IPv4 address."""
    if not host:
        return "-"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


class RateLimiter:
    """At most ``per_minute`` units per key per minute, with bursts up to ``per_minute``
    (a token bucket refilled continuously). ``per_minute`` 0 turns the limit off."""

    def __init__(self, per_minute: float, *, clock: Clock = time.monotonic, max_keys: int = 100_000) -> None:
        self.per_minute = per_minute
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)
        self._lock = threading.Lock()

    def acquire(self, key: str, cost: float = 1.0) -> float | None:
        """Take ``cost`` units for ``key``: None when allowed, else the seconds to wait."""
        if self.per_minute <= 0:
            return None
        rate = self.per_minute / 60.0
        with self._lock:
            at = self._clock()
            tokens, last = self._buckets.pop(key, (float(self.per_minute), at))
            tokens = min(float(self.per_minute), tokens + (at - last) * rate)
            if tokens >= cost:
                self._buckets[key] = (tokens - cost, at)
                self._trim()
                return None
            self._buckets[key] = (tokens, at)
            self._trim()
            return (cost - tokens) / rate

    def _trim(self) -> None:
        while len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)

    def __len__(self) -> int:
        return len(self._buckets)


def retry_after(seconds: float) -> str:
    """A ``Retry-After`` header value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))


class DailyBudget:
    """At most ``per_day`` units per key per UTC day (0 = no budget)."""

    def __init__(self, per_day: int, *, today: Callable[[], datetime] = lambda: datetime.now(UTC),
                 max_keys: int = 100_000) -> None:
        self.per_day = per_day
        self._today = today
        self._max_keys = max_keys
        self._spent: OrderedDict[str, tuple[str, int]] = OrderedDict()  # key -> (date, units)
        self._lock = threading.Lock()

    def spend(self, key: str, units: int) -> float | None:
        """Spend ``units`` for ``key`` if the day's budget has room for all of them: None, else
        the seconds until the budget renews (UTC midnight). A refused request spends nothing."""
        if self.per_day <= 0:
            return None
        at = self._today()
        day = at.date().isoformat()
        with self._lock:
            spent_day, spent = self._spent.pop(key, (day, 0))
            if spent_day != day:
                spent = 0
            if spent + units > self.per_day:
                self._spent[key] = (day, spent)
                midnight = datetime.combine(at.date() + timedelta(days=1), datetime.min.time(), tzinfo=UTC)
                return max(1.0, (midnight - at).total_seconds())
            self._spent[key] = (day, spent + units)
            while len(self._spent) > self._max_keys:
                self._spent.popitem(last=False)
            return None

    def remaining(self, key: str) -> int | None:
        if self.per_day <= 0:
            return None
        day = self._today().date().isoformat()
        with self._lock:
            spent_day, spent = self._spent.get(key, (day, 0))
        return self.per_day - (spent if spent_day == day else 0)


class Lockout:
    """After ``failures`` failed attempts from one key within ``seconds``, that key is refused
    for the rest of the window (``blocked`` says how long). ``failures`` 0 turns it off."""

    def __init__(self, failures: int, seconds: float, *, clock: Clock = time.monotonic,
                 max_keys: int = 100_000) -> None:
        self.failures = failures
        self.seconds = seconds
        self._clock = clock
        self._max_keys = max_keys
        self._seen: OrderedDict[str, list[float]] = OrderedDict()
        self._lock = threading.Lock()

    def _recent(self, key: str, at: float) -> list[float]:
        times = [t for t in self._seen.get(key, []) if at - t < self.seconds]
        if times:
            self._seen[key] = times
        else:
            self._seen.pop(key, None)
        return times

    def blocked(self, key: str) -> float | None:
        """None when ``key`` may try, else the seconds until it may again."""
        if self.failures <= 0:
            return None
        with self._lock:
            at = self._clock()
            times = self._recent(key, at)
            if len(times) >= self.failures:
                return max(0.001, times[-self.failures] + self.seconds - at)
            return None

    def failed(self, key: str) -> None:
        if self.failures <= 0:
            return
        with self._lock:
            at = self._clock()
            times = self._recent(key, at)
            times.append(at)
            self._seen[key] = times[-self.failures:]
            self._seen.move_to_end(key)
            while len(self._seen) > self._max_keys:
                self._seen.popitem(last=False)
