"""The ``logging.Handler``: enrich the record, hand it to the buffer, return. No I/O."""

from __future__ import annotations

import logging
import threading
from typing import Any, Protocol

from flask import current_app, has_app_context

from flask_cloudlog.events import event_from_record

# Loggers of the libraries on our own delivery path, and of cloudlog's own import packages:
# shipping their records would ship our own traffic, or loop. Only these: an app's own
# `services.billing` or `clients.api` logger is shipped like any other.
EXCLUDED_LOGGER_PREFIXES = (
    "boto3",
    "botocore",
    "s3transfer",
    "urllib3",
    "kombu",
    "celery",
    "amqp",
    "httpx",
    "httpcore",
    "flask_cloudlog",
    "cloudlog_core",
    "cloudlog_wire",
    "cloudlog_worker",
    "cloudlog_ingest",
    "cloudlog_writer",
    "cloudlog_cli",
    "cloudlog_devtools",
)


class EventSink(Protocol):
    """What the handler hands events to: one app's state (extension.CloudLogState)."""

    log_stream: str

    @property
    def log_group(self) -> str: ...

    def accept(self, event: dict[str, Any]) -> None: ...


# Loggers seen, and whether they are excluded: a process has a few dozen logger names; past
# this many (names made per request, say) the memo starts over rather than grow.
EXCLUSION_MEMO_MAX = 1_024
_exclusion_memo: dict[str, bool] = {}


def _matches_excluded_prefix(logger_name: str) -> bool:
    return any(
        logger_name == prefix or logger_name.startswith(prefix + ".")
        for prefix in EXCLUDED_LOGGER_PREFIXES
    )


def is_excluded(logger_name: str) -> bool:
    excluded = _exclusion_memo.get(logger_name)
    if excluded is None:
        excluded = _matches_excluded_prefix(logger_name)
        if len(_exclusion_memo) >= EXCLUSION_MEMO_MAX:
            _exclusion_memo.clear()
        _exclusion_memo[logger_name] = excluded
    return excluded


class CloudLogHandler(logging.Handler):
    """Ships records to CloudWatch Logs through cloudlog.

    Made by ``CloudLog.init_app`` (attached to ``app.logger`` by default) or named in logging
    configuration (``"class": "flask_cloudlog.CloudLogHandler"``); without a state of its
    own it uses the current app's, else the first app initialised in this process.
    """

    _default_state: EventSink | None = None

    def __init__(self, state: EventSink | None = None, level: int | str = logging.NOTSET):
        super().__init__(level)
        self._state = state
        self._local = threading.local()

    def _resolve_state(self) -> EventSink | None:
        if self._state is not None:
            return self._state
        if has_app_context():
            state: EventSink | None = current_app.extensions.get("cloudlog")
            if state is not None:
                return state
        return CloudLogHandler._default_state

    def handle(self, record: logging.LogRecord) -> bool:
        """``logging.Handler.handle`` without the handler's lock around ``emit``: ``emit`` is
        thread-safe (the buffer has a lock of its own; the re-entrancy guard is per thread), and
        taking an RLock per record is a cost every log call would pay for nothing."""
        result: object = self.filter(record)
        if isinstance(result, logging.LogRecord):  # a filter may return a record (3.12+)
            record = result
        if result:
            self.emit(record)
        return bool(result)

    def emit(self, record: logging.LogRecord) -> None:
        if is_excluded(record.name) or getattr(self._local, "busy", False):
            return
        state = self._resolve_state()
        if state is None:
            return
        self._local.busy = True  # a log call made while we handle one is not shipped again
        try:
            state.accept(
                event_from_record(record, log_group=state.log_group, log_stream=state.log_stream)
            )
        except Exception:
            self.handleError(record)
        finally:
            self._local.busy = False
