"""The ``logging.Handler``: enrich the record, hand it to the buffer, return. No I/O."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from flask import current_app, has_app_context

from clients.flask_ext.events import event_from_record

if TYPE_CHECKING:
    from clients.flask_ext.extension import CloudLogState

# Loggers of the libraries on our own delivery path, and our own: shipping their records
# would ship our own traffic, or loop.
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
    "cloudlog",
    "clients.flask_ext",
    "services",
)


def is_excluded(logger_name: str) -> bool:
    return any(
        logger_name == prefix or logger_name.startswith(prefix + ".")
        for prefix in EXCLUDED_LOGGER_PREFIXES
    )


class CloudLogHandler(logging.Handler):
    """Ships records to CloudWatch Logs through cloudlog.

    Made by ``CloudLog.init_app`` (attached to ``app.logger`` by default) or named in logging
    configuration (``"class": "clients.flask_ext.CloudLogHandler"``); without a state of its
    own it uses the current app's, else the first app initialised in this process.
    """

    _default_state: CloudLogState | None = None

    def __init__(self, state: CloudLogState | None = None, level: int | str = logging.NOTSET):
        super().__init__(level)
        self._state = state
        self._local = threading.local()

    def _resolve_state(self) -> CloudLogState | None:
        if self._state is not None:
            return self._state
        if has_app_context():
            state: CloudLogState | None = current_app.extensions.get("cloudlog")
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
                event_from_record(
                    record, log_group=state.settings.log_group or "", log_stream=state.log_stream
                )
            )
        except Exception:
            self.handleError(record)
        finally:
            self._local.busy = False
