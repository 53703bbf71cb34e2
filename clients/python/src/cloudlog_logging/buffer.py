"""The bounded in-process buffer between the request path and the dispatcher thread.

Bounded in events and (approximately, by characters) in bytes. When full, the policy decides:
``drop_oldest`` makes room by dropping the oldest event; ``block`` waits up to a timeout for
room and then drops the new event. Every drop is counted; nothing is dropped in silence.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from cloudlog_logging.settings import OverflowPolicy

# A rough per-event cost beyond the message text: the dict, ids, names, fields.
EVENT_OVERHEAD_ESTIMATE = 256


def estimated_size(event: dict[str, Any]) -> int:
    return len(event["message"]) + EVENT_OVERHEAD_ESTIMATE


@dataclass(frozen=True, slots=True)
class BufferStats:
    depth: int
    bytes: int
    dropped: int
    accepted: int


class EventBuffer:
    def __init__(
        self,
        *,
        max_events: int,
        max_bytes: int,
        policy: OverflowPolicy = OverflowPolicy.DROP_OLDEST,
        block_timeout: float = 0.05,
    ) -> None:
        self._max_events = max_events
        self._max_bytes = max_bytes
        self._policy = policy
        self._block_timeout = block_timeout
        self._events: deque[tuple[dict[str, Any], int]] = deque()
        self._bytes = 0
        self._dropped = 0
        self._accepted = 0
        # Called (with the lock held) when a full batch waits or on wake(): how a dispatcher
        # serving many buffers from one thread hears of this one (delivery.py).
        self.on_ready: Callable[[], None] | None = None
        self._reinit_locks()

    def _reinit_locks(self) -> None:
        self._lock = threading.Lock()
        self._not_full = threading.Condition(self._lock)
        self._ready = threading.Condition(self._lock)

    def reset_after_fork(self) -> None:
        """In a forked child: fresh locks, no parent events (the parent ships those)."""
        self._reinit_locks()
        self._events.clear()
        self._bytes = 0

    def _full(self, size: int) -> bool:
        return bool(self._events) and (
            len(self._events) >= self._max_events or self._bytes + size > self._max_bytes
        )

    def put(self, event: dict[str, Any], *, wake_at: int) -> bool:
        """Add an event; returns False if an event (this or an older one) had to be dropped.

        ``wake_at``: wake the dispatcher once this many events wait (a full batch).
        """
        size = len(event["message"]) + EVENT_OVERHEAD_ESTIMATE  # estimated_size, inlined
        kept = True
        with self._lock:
            events = self._events
            if events and (
                len(events) >= self._max_events or self._bytes + size > self._max_bytes
            ):  # _full(size), inlined: this is every log call's path
                if self._policy is OverflowPolicy.BLOCK:
                    self._not_full.wait_for(lambda: not self._full(size), self._block_timeout)
                    if self._full(size):
                        self._dropped += 1
                        return False
                else:
                    while self._full(size):
                        _, old_size = events.popleft()
                        self._bytes -= old_size
                        self._dropped += 1
                        kept = False
            events = self._events  # take() may have swapped the queue while this call waited
            events.append((event, size))
            self._bytes += size
            self._accepted += 1
            waiting = len(events)
            if waiting >= wake_at:
                self._ready.notify()
                # Once, as the batch fills: the runner's thread also looks at every tick.
                if waiting == wake_at and self.on_ready is not None:
                    self.on_ready()
        return kept

    def wait_for_events(self, count: int, timeout: float) -> None:
        """Block until ``count`` events wait or ``timeout`` passes."""
        with self._lock:
            self._ready.wait_for(lambda: len(self._events) >= count, timeout)

    def wake(self) -> None:
        with self._lock:
            self._ready.notify_all()
            if self.on_ready is not None:
                self.on_ready()

    def take(self, max_events: int) -> list[dict[str, Any]]:
        """Remove and return up to ``max_events`` events, oldest first.

        The request path waits for the lock meanwhile: when all fit, the queue is swapped out
        whole; otherwise the events are popped in one comprehension.
        """
        taken: Collection[tuple[dict[str, Any], int]]
        with self._lock:
            events = self._events
            if len(events) <= max_events:
                taken = events
                self._events = deque()
                self._bytes = 0
            else:
                pop = events.popleft
                taken = [pop() for _ in range(max_events)]
                self._bytes -= sum(size for _, size in taken)
            if taken:
                self._not_full.notify_all()
        return [event for event, _ in taken]

    def requeue_front(self, events: list[dict[str, Any]]) -> None:
        """Put events back at the front, in order (a batch that could not be packed whole)."""
        with self._lock:
            for event in reversed(events):
                size = estimated_size(event)
                self._events.appendleft((event, size))
                self._bytes += size

    def __len__(self) -> int:
        return len(self._events)

    def stats(self) -> BufferStats:
        with self._lock:
            return BufferStats(len(self._events), self._bytes, self._dropped, self._accepted)
