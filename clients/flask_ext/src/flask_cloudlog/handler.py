"""The ``logging.Handler``: enrich the record, hand it to the buffer, return. No I/O."""

from __future__ import annotations

import logging
import threading

from flask import current_app, has_app_context

from cloudlog_logging.events import record_event
from cloudlog_logging.handler import (
    EXCLUDED_LOGGER_PREFIXES,
    EXCLUSION_MEMO_MAX,
    EventSink,
    LockFreeHandler,
    _exclusion_memo,
    is_excluded,
)
from flask_cloudlog.events import request_fields

__all__ = [
    "EXCLUDED_LOGGER_PREFIXES",
    "EXCLUSION_MEMO_MAX",
    "CloudLogHandler",
    "EventSink",
    "_exclusion_memo",
    "is_excluded",
]


class CloudLogHandler(LockFreeHandler):
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

    def emit(self, record: logging.LogRecord) -> None:
        if is_excluded(record.name) or getattr(self._local, "busy", False):
            return
        state = self._resolve_state()
        if state is None:
            return
        self._local.busy = True  # a log call made while we handle one is not shipped again
        try:
            state.accept(
                record_event(
                    record,
                    log_group=state.log_group,
                    log_stream=state.log_stream,
                    fields=request_fields(),
                )
            )
        except Exception:
            self.handleError(record)
        finally:
            self._local.busy = False
