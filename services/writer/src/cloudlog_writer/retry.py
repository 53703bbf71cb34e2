"""How to retry: exponential backoff with full jitter, capped per sleep, in attempts and in time.

Full jitter (AWS Architecture Blog, "Exponential Backoff And Jitter"): the n-th sleep is drawn
uniformly from ``[0, min(cap, base * 2**n)]``.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class BackoffPolicy:
    max_attempts: int = 8
    max_total_seconds: float = 60.0
    base_seconds: float = 0.1
    max_sleep_seconds: float = 10.0
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    random: Callable[[], float] = field(default=random.random)

    def ceiling(self, retry_number: int) -> float:
        """Upper bound of the sleep before retry ``retry_number`` (0-based), capped."""
        # Clamp the exponent so huge attempt numbers cannot overflow the float.
        return min(self.max_sleep_seconds, self.base_seconds * 2.0 ** min(retry_number, 64))

    def delay(self, retry_number: int) -> float:
        return self.random() * self.ceiling(retry_number)

    def start(self) -> RetryState:
        return RetryState(self)


class RetryState:
    """The budget of one operation: counts attempts and time since :meth:`BackoffPolicy.start`."""

    def __init__(self, policy: BackoffPolicy) -> None:
        self._policy = policy
        self._started = policy.clock()
        self.attempts = 1  # the first attempt is under way when the state is created
        self._sleeps = 0

    @property
    def elapsed(self) -> float:
        return self._policy.clock() - self._started

    def _may_retry(self, pause: float) -> bool:
        policy = self._policy
        return (
            self.attempts < policy.max_attempts and self.elapsed + pause <= policy.max_total_seconds
        )

    def backoff(self) -> bool:
        """Sleep before the next attempt; False (without sleeping) if the budget is spent."""
        pause = self._policy.delay(self._sleeps)
        if not self._may_retry(pause):
            return False
        self._policy.sleep(pause)
        self._sleeps += 1
        self.attempts += 1
        return True

    def retry_now(self) -> bool:
        """Count an immediate retry (a created stream, a corrected token); False if spent."""
        if not self._may_retry(0.0):
            return False
        self.attempts += 1
        return True
