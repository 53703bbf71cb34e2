"""CloudWatch Logs writer: every PutLogEvents limit respected, one result per event."""

from .models import EventResult, GroupOptions, LogEvent, Outcome, RejectReason
from .observer import NullObserver, RetryCause, WriterObserver
from .settings import WriterSettings
from .writer import CloudWatchWriter, make_logs_client

__all__ = [
    "CloudWatchWriter",
    "EventResult",
    "GroupOptions",
    "LogEvent",
    "NullObserver",
    "Outcome",
    "RejectReason",
    "RetryCause",
    "WriterObserver",
    "WriterSettings",
    "make_logs_client",
]
