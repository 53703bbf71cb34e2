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
    sizes: Sequence[int] | None = None,
    max_bytes: int = MAX_BATCH_BYTES,
    max_events: int = MAX_BATCH_EVENTS,
    max_span_ms: int = MAX_BATCH_SPAN_MS,
) -> list[range]:
    """Index ranges into ``events`` (already in chronological order), one per batch.

    ``sizes[i]``, when given, is ``event_size(events[i].message)`` already computed (UTF-8
    bytes + 26), so a message is not encoded again. Greedy: a batch grows until the next event
    would break a limit.
    """
    if sizes is None:
        sizes = [event_size(event.message) for event in events]
    elif len(sizes) != len(events):
        raise ValueError("one size per event")
    batches: list[range] = []
    start = 0
    size = 0
    first_ts = previous_ts = events[0].timestamp if events else 0
    for index, (event, event_bytes) in enumerate(zip(events, sizes, strict=True)):
        timestamp = event.timestamp
        if timestamp < previous_ts:
            raise ValueError("events must be in chronological order")
        previous_ts = timestamp
        if event_bytes > max_bytes:
            raise EventTooLargeError(f"event {event.event_id!r} is {event_bytes} bytes")
        if index > start and (
            size + event_bytes > max_bytes
            or index - start >= max_events
            or timestamp - first_ts > max_span_ms
        ):
            batches.append(range(start, index))
            start, size, first_ts = index, 0, timestamp
        size += event_bytes
    if start < len(events):
        batches.append(range(start, len(events)))
    return batches
