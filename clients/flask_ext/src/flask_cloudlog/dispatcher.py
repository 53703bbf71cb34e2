"""Batching and publishing: cloudlog_logging.dispatcher (kept here for existing imports)."""

from cloudlog_logging.dispatcher import (
    CELERY_EMBED,
    FORK_WAIT_S,
    TASK_ENVELOPE_BYTES,
    Dispatcher,
    TaskEncoder,
    json_size,
    split_event,
)

__all__ = [
    "CELERY_EMBED",
    "FORK_WAIT_S",
    "TASK_ENVELOPE_BYTES",
    "Dispatcher",
    "TaskEncoder",
    "json_size",
    "split_event",
]
