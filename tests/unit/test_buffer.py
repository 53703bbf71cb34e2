from __future__ import annotations

import threading
import time
from typing import Any

from flask_cloudlog.buffer import EVENT_OVERHEAD_ESTIMATE, EventBuffer
from flask_cloudlog.settings import OverflowPolicy


def event(n: int, size: int = 1) -> dict[str, Any]:
    return {"message": str(n).ljust(size, "x"), "n": n}


def test_drop_oldest_keeps_the_newest_and_counts_every_drop() -> None:
    buffer = EventBuffer(max_events=3, max_bytes=10**9)
    kept = [buffer.put(event(n), wake_at=100) for n in range(5)]
    assert kept == [True, True, True, False, False]
    assert [e["n"] for e in buffer.take(10)] == [2, 3, 4]
    stats = buffer.stats()
    assert (stats.dropped, stats.accepted, stats.depth) == (2, 5, 0)


def test_byte_bound_applies_as_well_as_the_event_bound() -> None:
    per_event = 100 + EVENT_OVERHEAD_ESTIMATE
    buffer = EventBuffer(max_events=1000, max_bytes=per_event * 2)
    for n in range(4):
        buffer.put(event(n, size=100), wake_at=1000)
    assert len(buffer) == 2
    assert buffer.stats().bytes == per_event * 2
    assert buffer.stats().dropped == 2


def test_block_policy_waits_then_drops_the_new_event() -> None:
    buffer = EventBuffer(
        max_events=1, max_bytes=10**9, policy=OverflowPolicy.BLOCK, block_timeout=0.05
    )
    assert buffer.put(event(1), wake_at=10)
    started = time.monotonic()
    assert not buffer.put(event(2), wake_at=10)
    assert time.monotonic() - started >= 0.04
    assert [e["n"] for e in buffer.take(10)] == [1]
    assert buffer.stats().dropped == 1


def test_block_policy_admits_once_room_is_made() -> None:
    buffer = EventBuffer(
        max_events=1, max_bytes=10**9, policy=OverflowPolicy.BLOCK, block_timeout=5
    )
    buffer.put(event(1), wake_at=10)
    threading.Timer(0.05, lambda: buffer.take(1)).start()
    assert buffer.put(event(2), wake_at=10)
    assert [e["n"] for e in buffer.take(10)] == [2]
    assert buffer.stats().dropped == 0


def test_take_is_bounded_and_ordered_and_requeue_restores_the_front() -> None:
    buffer = EventBuffer(max_events=100, max_bytes=10**9)
    for n in range(10):
        buffer.put(event(n), wake_at=100)
    first = buffer.take(4)
    assert [e["n"] for e in first] == [0, 1, 2, 3]
    buffer.requeue_front(first)
    assert [e["n"] for e in buffer.take(100)] == list(range(10))


def test_a_full_batch_wakes_the_waiting_dispatcher() -> None:
    buffer = EventBuffer(max_events=100, max_bytes=10**9)
    woke = threading.Event()

    def waiter() -> None:
        buffer.wait_for_events(3, timeout=5)
        woke.set()

    thread = threading.Thread(target=waiter)
    thread.start()
    for n in range(3):
        buffer.put(event(n), wake_at=3)
    assert woke.wait(2)
    thread.join()
