"""Per-tenant rate limits: a token bucket each, in events (and one in new streams).

A request is admitted while the bucket holds at least one token, and takes as many tokens as it
carries events, so the bucket may go into debt: a batch larger than the burst still gets
through, and the tenant then waits until the debt is paid. Over the rate: 429 with Retry-After.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

from cloudlog_ingest.tenants import Tenant


class TokenBucket:
    def __init__(self, rate: float, burst: int, clock: Callable[[], float]) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._updated = clock()

    def take(self, count: int) -> float:
        """Take ``count`` tokens; returns 0 if admitted, else the seconds to wait."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
        self._updated = now
        if self._tokens >= 1:
            self._tokens -= count
            return 0.0
        return (1 - self._tokens) / self.rate


class Quotas:
    """One bucket per tenant (as many as the registry has tenants)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}
        self._lock = threading.Lock()

    def admit(self, tenant: Tenant, events: int) -> int:
        """0 if admitted, else the whole seconds to put in Retry-After."""
        with self._lock:
            bucket = self._buckets.get(tenant.name)
            if bucket is None or (bucket.rate, bucket.burst) != (tenant.rate, tenant.burst):
                bucket = self._buckets[tenant.name] = TokenBucket(
                    tenant.rate, tenant.burst, self._clock
                )
            wait = bucket.take(events)
        return 0 if wait == 0 else max(1, math.ceil(wait))

    def forget_all_but(self, names: set[str]) -> None:
        with self._lock:
            for name in set(self._buckets) - names:
                del self._buckets[name]


class NewStreamQuotas:
    """Per tenant, a token bucket of group and stream creations (``rate`` per second, ``burst``).

    Creating a stream costs a CreateLogStream call (about 50 per second per account on AWS) and
    keeps the writer busy for as long as the creations take, so new streams are a quota of their
    own, checked before a request is admitted. A request needing up to ``burst`` creations is
    admitted while the bucket holds that many; a larger one once the bucket is full, leaving it in
    debt (so it is admitted at all, and the tenant's average stays at ``rate``).
    """

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # tenant -> (tokens, updated)
        self._lock = threading.Lock()

    def admit(self, tenant: str, creations: int) -> int:
        """0 if admitted (the creations are taken), else the whole seconds to put in
        Retry-After."""
        if creations <= 0:
            return 0
        with self._lock:
            now = self._clock()
            tokens, updated = self._buckets.get(tenant, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - updated) * self.rate)
            needed = min(creations, self.burst)
            if tokens >= needed:
                self._buckets[tenant] = (tokens - creations, now)
                return 0
            self._buckets[tenant] = (tokens, now)
        return max(1, math.ceil((needed - tokens) / self.rate))

    def forget_all_but(self, names: set[str]) -> None:
        with self._lock:
            for name in set(self._buckets) - names:
                del self._buckets[name]
