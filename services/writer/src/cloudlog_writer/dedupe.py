"""A bounded memory of events already written, so a redelivered event is not written twice.

Architecture invariant 2: redelivery never duplicates. SQS redelivers a batch whose worker died
after the write but before the ack; the writer then sees the same events again. An event counts
as the same only if group, stream, event_id, timestamp and message all match, so a reused id with
different content is still written. Best effort by design: bounded in size and age, and local to
one writer process.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

from .existence import BoundedTtlCache
from .models import LogEvent


def fingerprint(event: LogEvent) -> bytes:
    digest = hashlib.blake2b(event.message.encode("utf-8"), digest_size=16)
    digest.update(event.timestamp.to_bytes(8, "big", signed=True))
    return digest.digest()


class WrittenEvents:
    def __init__(
        self, max_entries: int, ttl_seconds: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._cache: BoundedTtlCache[tuple[str, str, str], bytes] | None = (
            BoundedTtlCache(max_entries, ttl_seconds, clock) if max_entries > 0 else None
        )

    @property
    def enabled(self) -> bool:
        """False with ``max_entries=0``: nothing is remembered (ingest's journal does it)."""
        return self._cache is not None

    def seen(self, event: LogEvent) -> bool:
        if self._cache is None:
            return False
        stored = self._cache.get((event.log_group, event.log_stream, event.event_id))
        return stored is not None and stored == fingerprint(event)

    def record(self, event: LogEvent) -> None:
        if self._cache is not None:
            key = (event.log_group, event.log_stream, event.event_id)
            self._cache.put(key, fingerprint(event))
