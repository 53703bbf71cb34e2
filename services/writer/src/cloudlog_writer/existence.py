"""A bounded, thread-safe memory of which log groups and streams are known to exist.

Bounded twice: at most ``max_entries`` (least recently used evicted first) and each entry
trusted for ``ttl_seconds`` only, so a group deleted behind our back is noticed at the latest
after the TTL (and at once when PutLogEvents answers ResourceNotFoundException).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class BoundedTtlCache(Generic[K, V]):
    """LRU map with a size bound and a per-entry age bound."""

    def __init__(
        self, max_entries: int, ttl_seconds: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        if ttl_seconds <= 0:
            raise ValueError("ttl_seconds must be positive")
        self._max_entries = max_entries
        self._ttl = ttl_seconds
        self._clock = clock
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self._lock = threading.Lock()

    def lookup(self, key: K) -> tuple[bool, V | None]:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return False, None
            stored_at, value = entry
            if self._clock() - stored_at >= self._ttl:
                del self._entries[key]
                return False, None
            self._entries.move_to_end(key)
            return True, value

    def get(self, key: K) -> V | None:
        return self.lookup(key)[1]

    def __contains__(self, key: K) -> bool:
        return self.lookup(key)[0]

    def put(self, key: K, value: V) -> None:
        with self._lock:
            self._entries[key] = (self._clock(), value)
            self._entries.move_to_end(key)
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)

    def discard(self, key: K) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


class ExistenceCache:
    """Which groups (with their retention, when known) and streams are known to exist."""

    def __init__(
        self, max_entries: int, ttl_seconds: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        # One shared bound for both kinds of entry; keys are tagged by kind.
        self._cache: BoundedTtlCache[tuple[str, ...], int | None] = BoundedTtlCache(
            max_entries, ttl_seconds, clock
        )

    def has_group(self, group: str) -> bool:
        return ("group", group) in self._cache

    def group_retention_days(self, group: str) -> int | None:
        """Retention of the group if the writer knows it (it created the group), else None."""
        return self._cache.get(("group", group))

    def add_group(self, group: str, retention_days: int | None = None) -> None:
        if retention_days is None:
            # Keep a retention learned earlier: "exists" must not erase what we know.
            retention_days = self._cache.get(("group", group))
        self._cache.put(("group", group), retention_days)

    def has_stream(self, group: str, stream: str) -> bool:
        return ("stream", group, stream) in self._cache

    def add_stream(self, group: str, stream: str) -> None:
        self._cache.put(("stream", group, stream), None)

    def forget(self, group: str, stream: str) -> None:
        """Drop both entries: a ResourceNotFoundException does not say which one is gone."""
        self._cache.discard(("stream", group, stream))
        self._cache.discard(("group", group))

    def __len__(self) -> int:
        return len(self._cache)
