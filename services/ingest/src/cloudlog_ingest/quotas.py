"""Per-tenant rate limits: a token bucket each, in events.

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
