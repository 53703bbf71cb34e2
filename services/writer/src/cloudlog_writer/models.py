"""What goes into the writer and what comes out of it, one result per event."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import NamedTuple


@dataclass(frozen=True, slots=True)
class LogEvent:
    """One event bound for CloudWatch Logs. ``message`` is the final text to store."""

    event_id: str
    log_group: str
    log_stream: str
    timestamp: int  # milliseconds since the epoch, UTC
    message: str


class Outcome(StrEnum):
    WRITTEN = "written"
    REJECTED = "rejected"


class RejectReason(StrEnum):
    """Why an event was not written. Stable strings: they reach API answers and metrics."""

    TOO_OLD = "too_old"  # older than 14 days (PutLogEvents docs)
    EXPIRED = "expired"  # older than the group's retention
    TOO_NEW = "too_new"  # more than 2 hours in the future
    INVALID = "invalid"  # InvalidParameterException and other permanent errors
    RETRIES_EXHAUSTED = "retries_exhausted"  # retriable errors past the attempt or time cap
    ACCESS_DENIED = "access_denied"


class EventResult(NamedTuple):
    """What became of one event. A named tuple (immutable, like the other models) because
    the writer makes one per event and a tuple costs half what a frozen dataclass does."""

    event_id: str
    outcome: Outcome
    reason: RejectReason | None = None
    detail: str | None = None

    @property
    def written(self) -> bool:
        return self.outcome is Outcome.WRITTEN


@dataclass(frozen=True, slots=True)
class GroupOptions:
    """Applied when the writer creates a log group."""

    retention_days: int | None = None
    kms_key_id: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
