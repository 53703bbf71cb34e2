"""Cut a chronologically ordered stream of events into PutLogEvents batches.

Every batch respects all request limits at once: total bytes (UTF-8 + 26 per event), event count
and the 24-hour span. Batches are contiguous slices, so chronological order carries over.
"""

from __future__ import annotations

from collections.abc import Sequence

from .limits import MAX_BATCH_BYTES, MAX_BATCH_EVENTS, MAX_BATCH_SPAN_MS, event_size
from .models import LogEvent


class EventTooLargeError(ValueError):
    """An event alone exceeds the batch byte limit (it should have been split first)."""


def plan_batches(
    events: Sequence[LogEvent],
    *,
    max_bytes: int = MAX_BATCH_BYTES,
    max_events: int = MAX_BATCH_EVENTS,
    max_span_ms: int = MAX_BATCH_SPAN_MS,
) -> list[range]:
    """Index ranges into ``events`` (already in chronological order), one per batch.

    Greedy: a batch grows until the next event would break a limit.
    """
    batches: list[range] = []
    start = 0
    size = 0
    for index, event in enumerate(events):
        if index > 0 and event.timestamp < events[index - 1].timestamp:
            raise ValueError("events must be in chronological order")
        event_bytes = event_size(event.message)
        if event_bytes > max_bytes:
            raise EventTooLargeError(f"event {event.event_id!r} is {event_bytes} bytes")
        if index > start and (
            size + event_bytes > max_bytes
            or index - start >= max_events
            or event.timestamp - events[start].timestamp > max_span_ms
        ):
            batches.append(range(start, index))
            start, size = index, 0
        size += event_bytes
    if start < len(events):
        batches.append(range(start, len(events)))
    return batches
