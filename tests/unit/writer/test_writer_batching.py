from __future__ import annotations

import pytest

from cloudlog_writer.batching import EventTooLargeError, plan_batches
from cloudlog_writer.limits import (
    EVENT_OVERHEAD_BYTES,
    MAX_BATCH_BYTES,
    MAX_BATCH_EVENTS,
    MAX_BATCH_SPAN_MS,
    event_size,
)
from cloudlog_writer.models import LogEvent
from cloudlog_writer.ordering import chronological


def ev(i: int, ts: int = 0, message: str = "x", group: str = "g", stream: str = "s") -> LogEvent:
    return LogEvent(f"id{i}", group, stream, ts, message)


def sizes(events: list[LogEvent], batches: list[range]) -> list[int]:
    return [sum(event_size(events[i].message) for i in r) for r in batches]


def test_event_size_counts_utf8_bytes_plus_26() -> None:
    assert event_size("a") == 1 + 26
    assert event_size("é") == 2 + 26
    assert event_size("€") == 3 + 26
    assert event_size("😀") == 4 + 26


def test_batch_of_exactly_max_bytes_is_one_batch() -> None:
    # Two events filling 1,048,576 bytes exactly.
    first = MAX_BATCH_BYTES // 2 - EVENT_OVERHEAD_BYTES
    second = MAX_BATCH_BYTES - (first + EVENT_OVERHEAD_BYTES) - EVENT_OVERHEAD_BYTES
    events = [ev(0, message="a" * first), ev(1, message="b" * second)]
    assert sum(event_size(e.message) for e in events) == MAX_BATCH_BYTES
    assert plan_batches(events) == [range(0, 2)]


def test_one_byte_over_max_bytes_splits() -> None:
    first = MAX_BATCH_BYTES // 2 - EVENT_OVERHEAD_BYTES
    second = MAX_BATCH_BYTES - (first + EVENT_OVERHEAD_BYTES) - EVENT_OVERHEAD_BYTES + 1
    events = [ev(0, message="a" * first), ev(1, message="b" * second)]
    assert plan_batches(events) == [range(0, 1), range(1, 2)]


def test_multibyte_characters_count_by_utf8_length() -> None:
    # 4-byte emoji: by characters this would fit, by bytes it must not.
    n = (MAX_BATCH_BYTES // 2 - EVENT_OVERHEAD_BYTES) // 4
    events = [ev(0, message="😀" * n), ev(1, message="😀" * n), ev(2, message="😀")]
    batches = plan_batches(events)
    assert all(size <= MAX_BATCH_BYTES for size in sizes(events, batches))
    assert batches == [range(0, 2), range(2, 3)]


def test_exactly_10000_events_fit_and_10001_do_not() -> None:
    events = [ev(i) for i in range(MAX_BATCH_EVENTS)]
    assert plan_batches(events) == [range(0, MAX_BATCH_EVENTS)]
    events.append(ev(MAX_BATCH_EVENTS))
    assert plan_batches(events) == [range(0, MAX_BATCH_EVENTS), range(MAX_BATCH_EVENTS, 10_001)]


def test_span_of_exactly_24h_fits_one_ms_more_splits() -> None:
    assert plan_batches([ev(0, 0), ev(1, MAX_BATCH_SPAN_MS)]) == [range(0, 2)]
    assert plan_batches([ev(0, 0), ev(1, MAX_BATCH_SPAN_MS + 1)]) == [range(0, 1), range(1, 2)]


def test_span_measured_from_batch_start() -> None:
    hour = 3_600_000
    events = [ev(i, i * 10 * hour) for i in range(6)]  # 0h, 10h, 20h, 30h, 40h, 50h
    assert plan_batches(events) == [range(0, 3), range(3, 6)]


def test_all_limits_hold_on_a_mixed_load() -> None:
    events = [ev(i, i * 60_000, "é" * (i % 5000 + 1)) for i in range(30_000)]
    batches = plan_batches(events)
    assert [i for r in batches for i in r] == list(range(30_000))  # contiguous, nothing lost
    for r, size in zip(batches, sizes(events, batches), strict=True):
        assert size <= MAX_BATCH_BYTES
        assert len(r) <= MAX_BATCH_EVENTS
        assert events[r[-1]].timestamp - events[r[0]].timestamp <= MAX_BATCH_SPAN_MS


def test_unordered_input_and_oversized_event_are_refused() -> None:
    with pytest.raises(ValueError, match="chronological"):
        plan_batches([ev(0, 5), ev(1, 4)])
    with pytest.raises(EventTooLargeError):
        plan_batches([ev(0, message="a" * MAX_BATCH_BYTES)])


def test_empty_input_has_no_batches() -> None:
    assert plan_batches([]) == []


def test_stable_order_for_equal_timestamps() -> None:
    events = [ev(0, 5), ev(1, 3), ev(2, 5), ev(3, 3), ev(4, 1), ev(5, 5)]
    ordered = chronological(events, lambda e: e.timestamp)
    assert [e.event_id for e in ordered] == ["id4", "id1", "id3", "id0", "id2", "id5"]
