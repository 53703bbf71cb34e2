"""Map PutLogEvents ``rejectedLogEventsInfo`` back to the exact events of the batch.

Documented meaning (RejectedLogEventsInfo shape): ``tooNewLogEventStartIndex`` is the first
too-new event (inclusive); ``tooOldLogEventEndIndex`` ends the too-old events (exclusive);
``expiredLogEventEndIndex`` ends the expired events (taken as exclusive, like its sibling).

The wording is ambiguous ("the index of the last log event that is too old. This field is
exclusive") and emulators differ (moto reports the last too-old index, and the last too-new
one). Reporting a dropped event as written would lose it in silence, so the documented ranges
are widened, never narrowed: events with a timestamp equal to a rejected one share its fate,
and events our own clock places outside the window are rejected too when the service reported
that kind of rejection at all.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .limits import MAX_EVENT_AGE_MS, MAX_FUTURE_MS
from .models import LogEvent, RejectReason


def _index(info: Mapping[str, Any], name: str, size: int) -> int | None:
    value = info.get(name)
    if value is None:
        return None
    return max(0, min(int(value), size))


def map_rejections(
    batch: Sequence[LogEvent], info: Mapping[str, Any] | None, now_ms: int
) -> dict[int, RejectReason]:
    """Batch index -> reason, for every event the service did not store."""
    rejected: dict[int, RejectReason] = {}
    if not info:
        return rejected
    size = len(batch)
    stamps = [event.timestamp for event in batch]

    too_new = _index(info, "tooNewLogEventStartIndex", size)
    if too_new is not None:
        first_ts = stamps[too_new] if too_new < size else None
        for i, ts in enumerate(stamps):
            if (
                i >= too_new
                or (first_ts is not None and ts >= first_ts)
                or ts > now_ms + MAX_FUTURE_MS
            ):
                rejected[i] = RejectReason.TOO_NEW

    for name, reason, too_old_by_clock in (
        ("tooOldLogEventEndIndex", RejectReason.TOO_OLD, now_ms - MAX_EVENT_AGE_MS),
        ("expiredLogEventEndIndex", RejectReason.EXPIRED, None),
    ):
        end = _index(info, name, size)
        if end is None:
            continue
        last_ts = stamps[end - 1] if end > 0 else None
        for i, ts in enumerate(stamps):
            if i in rejected:
                continue
            if (
                i < end
                or (last_ts is not None and ts <= last_ts)
                or (too_old_by_clock is not None and ts < too_old_by_clock)
            ):
                rejected[i] = reason
    return rejected
