"""Enrollment rate limits: token buckets per client address and for the whole process.

Enrollment is the one write a stranger can cause: anyone who has (or guesses at) the fleet's
enrollment secret can add devices as fast as the database takes rows, and every wrong guess costs
a request. Two token buckets bound it: one per client address (``OTA_ENROLL_RATE`` per second,
``OTA_ENROLL_BURST`` at once) and one for everybody (``OTA_ENROLL_GLOBAL_RATE``,
``OTA_ENROLL_GLOBAL_BURST``). A rate of 0 turns that limit off. A refused request takes no token
from either bucket, so an address that keeps hammering does not drain the global bucket for others.

The buckets live in the memory of one server process: with N workers or replicas the effective
limits are up to N times the configured ones (docs/operations.md). The client address is the one
the ASGI server resolved — uvicorn replaces the peer address by ``X-Forwarded-For`` only when the
peer is one of ``ota-server serve --forwarded-allow-ips`` — so a client cannot choose its own
bucket by sending that header. IPv6 addresses share a bucket per /64 (one host usually holds a
whole /64). At most ``OTA_ENROLL_TRACKED_ADDRESSES`` addresses are remembered; the least recently
seen is forgotten first (it comes back with a full bucket: the global bucket still bounds a flood
from many addresses).

Pure policy: the clock is passed in (tests move it instead of sleeping), nothing here does I/O.
"""

from __future__ import annotations

import ipaddress
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

Scope = Literal["address", "global"]


@dataclass
class TokenBucket:
    """`burst` tokens at most, refilled at `rate` per second; one request takes one token."""

    rate: float
    burst: float
    tokens: float
    stamp: float

    @classmethod
    def full(cls, rate: float, burst: float, now: float) -> TokenBucket:
        return cls(rate=rate, burst=burst, tokens=burst, stamp=now)

    def refill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = max(self.stamp, now)

    def wait(self) -> float:
        """Seconds until a token is there (0 when one is there now); call :meth:`refill` first."""
        return 0.0 if self.tokens >= 1 else (1 - self.tokens) / self.rate

    def take(self) -> None:
        self.tokens -= 1


@dataclass(frozen=True)
class Refusal:
    """Why an enrollment was refused, and when it may be tried again (whole seconds, at least 1)."""

    scope: Scope
    retry_after: int


def address_key(address: str | None) -> str:
    """The bucket an address falls in: the IPv4 address, the /64 of an IPv6 address, else the text."""
    if not address:
        return "unknown"
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address[:100]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class EnrollmentLimiter:
    """Admits or refuses one enrollment at a time; thread-safe, bounded memory."""

    def __init__(
        self,
        *,
        rate: float,
        burst: int,
        global_rate: float,
        global_burst: int,
        max_addresses: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate, self.burst = rate, burst
        self.max_addresses = max_addresses
        self.clock = clock
        self._global = TokenBucket.full(global_rate, global_burst, clock()) if global_rate > 0 else None
        self._addresses: OrderedDict[str, TokenBucket] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.rate > 0 or self._global is not None

    @property
    def tracked(self) -> int:
        """How many client addresses have a bucket now (at most ``max_addresses``)."""
        return len(self._addresses)

    def admit(self, address: str | None) -> Refusal | None:
        """None when the enrollment may go ahead (its tokens are taken); else the refusal."""
        if not self.enabled:
            return None
        with self._lock:
            now = self.clock()
            mine = self._bucket(address_key(address), now) if self.rate > 0 else None
            waits: list[tuple[float, Scope]] = []
            pairs: tuple[tuple[TokenBucket | None, Scope], ...] = ((mine, "address"), (self._global, "global"))
            for bucket, scope in pairs:
                if bucket is not None:
                    bucket.refill(now)
                    if (wait := bucket.wait()) > 0:
                        waits.append((wait, scope))
            if waits:
                wait, scope = max(waits)
                return Refusal(scope=scope, retry_after=max(1, math.ceil(wait)))
            for bucket in (mine, self._global):
                if bucket is not None:
                    bucket.take()
            return None

    def _bucket(self, key: str, now: float) -> TokenBucket:
        bucket = self._addresses.get(key)
        if bucket is not None:
            self._addresses.move_to_end(key)
            return bucket
        while len(self._addresses) >= self.max_addresses:
            self._addresses.popitem(last=False)
        bucket = self._addresses[key] = TokenBucket.full(self.rate, self.burst, now)
        return bucket
