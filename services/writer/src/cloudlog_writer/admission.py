"""Checks made before an event is sent: what CloudWatch would refuse is refused here, per event.

An invalid name, an empty message or an out-of-window timestamp would otherwise either fail a
whole PutLogEvents call (names, empty message) or be dropped by the service (time window).
"""

from __future__ import annotations

from cloudlog_core.names import valid_group_name, valid_stream_name

from .limits import MAX_EVENT_AGE_MS, MAX_FUTURE_MS, MS_PER_DAY
from .models import LogEvent, RejectReason

Refusal = tuple[RejectReason, str]


def check_names(group: str, stream: str) -> Refusal | None:
    """Why no event may go to ``group``/``stream``, or None: the writer asks once per stream."""
    if not valid_group_name(group):
        return RejectReason.INVALID, f"invalid log group name {group[:600]!r}"
    if not valid_stream_name(stream):
        return RejectReason.INVALID, f"invalid log stream name {stream[:600]!r}"
    return None


def oldest_allowed_ms(now_ms: int, retention_days: int | None = None) -> int:
    """The oldest timestamp :func:`check_event` lets through (the newest: ``now + 2 h``)."""
    oldest = now_ms - MAX_EVENT_AGE_MS
    if retention_days is not None:
        oldest = max(oldest, now_ms - retention_days * MS_PER_DAY)
    return oldest


def check_event(event: LogEvent, now_ms: int, retention_days: int | None = None) -> Refusal | None:
    """Why ``event`` must not be sent, or None if it may go."""
    refusal = check_names(event.log_group, event.log_stream)
    if refusal is not None:
        return refusal
    if not event.message:
        return RejectReason.INVALID, "empty message (CloudWatch requires at least 1 character)"
    try:
        event.message.encode("utf-8")
    except UnicodeEncodeError as exc:
        return RejectReason.INVALID, f"message is not valid UTF-8 text: {exc.reason}"
    if event.timestamp < now_ms - MAX_EVENT_AGE_MS:
        return RejectReason.TOO_OLD, "timestamp more than 14 days in the past"
    if retention_days is not None and event.timestamp < now_ms - retention_days * MS_PER_DAY:
        return (
            RejectReason.EXPIRED,
            f"timestamp older than the group's {retention_days}-day retention",
        )
    if event.timestamp > now_ms + MAX_FUTURE_MS:
        return RejectReason.TOO_NEW, "timestamp more than 2 hours in the future"
    return None
