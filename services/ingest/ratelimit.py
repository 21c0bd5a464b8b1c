"""How many reports one client may submit: the web layer's token bucket
(``hotline.web.ratelimit``) per client address (IPv6 per /64), with the answer the form and
the API need (allowed, or whole seconds for ``Retry-After``).

Per process on purpose: no third-party service and no shared store. With several web
processes the effective limit is that many times the setting, which is still a limit a
flood runs into; a hotline that needs one global limit puts it in its reverse proxy. The
buckets hold client addresses only in memory, never written anywhere, and are capped in
number so a spray of addresses cannot grow memory without bound.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from hotline.web import ratelimit
from hotline.web.ratelimit import client_key

__all__ = ["Decision", "RateLimiter", "client_key"]


@dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_after_seconds: int = 0  # whole seconds until one more report is allowed (Retry-After)


class RateLimiter:
    """``per_minute`` reports per client, in bursts of up to ``per_minute``; 0 lets all through."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic, max_clients: int = 100_000) -> None:
        self.per_minute = per_minute
        self._bucket = ratelimit.RateLimiter(per_minute, clock=clock, max_keys=max_clients)

    @property
    def tracked(self) -> int:
        """How many client addresses are held in memory now (bounded by ``max_clients``)."""
        return len(self._bucket)

    def check(self, host: str | None) -> Decision:
        """Take one token for ``host`` if there is one."""
        wait = self._bucket.acquire(client_key(host))
        return Decision(True) if wait is None else Decision(False, max(1, math.ceil(wait)))
