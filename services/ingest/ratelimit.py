"""How many reports one client may submit: a token bucket per client address, in memory.

Per process on purpose: no third-party service and no shared store. With several web
processes the effective limit is that many times the setting, which is still a limit a
flood runs into; a hotline that needs one global limit puts it in its reverse proxy. The
buckets hold client addresses only for as long as they are not full again (at most a
minute), are never written anywhere, and are capped in number so a spray of addresses
cannot grow memory without bound.

IPv6 clients are counted per /64: one subscriber usually has a whole /64, and counting
single addresses would let one machine rotate through them.
"""

from __future__ import annotations

import ipaddress
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


def client_key(host: str | None) -> str:
    """The bucket a client address counts against (IPv4 address, IPv6 /64)."""
    if not host:
        return "-"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is None:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address.ipv4_mapped or address) if isinstance(address, ipaddress.IPv6Address) else str(address)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_after_seconds: int = 0  # whole seconds until one more report is allowed (Retry-After)


class RateLimiter:
    """``per_minute`` reports per client, in bursts of up to ``per_minute``; 0 lets all through."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic, max_clients: int = 100_000) -> None:
        self.per_minute = per_minute
        self.clock = clock
        self.max_clients = max_clients
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)
        self._lock = threading.Lock()

    @property
    def _refill_per_second(self) -> float:
        return self.per_minute / 60.0

    def _tokens(self, key: str, now: float) -> float:
        tokens, at = self._buckets.get(key, (float(self.per_minute), now))
        return min(float(self.per_minute), tokens + (now - at) * self._refill_per_second)

    def check(self, host: str | None) -> Decision:
        """Take one token for ``host`` if there is one."""
        if self.per_minute <= 0:
            return Decision(True)
        key = client_key(host)
        with self._lock:
            now = self.clock()
            tokens = self._tokens(key, now)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                if len(self._buckets) > self.max_clients:
                    self._forget_full(now)
                return Decision(True)
            self._buckets[key] = (tokens, now)
            return Decision(False, max(1, math.ceil((1.0 - tokens) / self._refill_per_second)))

    def _forget_full(self, now: float) -> None:
        """Drop buckets that have refilled (they behave exactly like absent ones); if a flood of
        distinct addresses keeps them all partly used, drop the oldest half."""
        full = [k for k in self._buckets if self._tokens(k, now) >= self.per_minute]
        for k in full:
            del self._buckets[k]
        if len(self._buckets) > self.max_clients:
            for k, _ in sorted(self._buckets.items(), key=lambda kv: kv[1][1])[: len(self._buckets) // 2]:
                del self._buckets[k]
