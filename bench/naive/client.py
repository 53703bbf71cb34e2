"""The seed's Flask-side log client: every log record becomes one Celery task."""

from __future__ import annotations

import logging

from bench.naive.tasks import send_log_to_logger


class NaiveLogHandler(logging.Handler):
    def __init__(self, log_group: str, log_stream: str) -> None:
        super().__init__()
        self.log_group = log_group
        self.log_stream = log_stream

    def emit(self, record: logging.LogRecord) -> None:
        try:
            send_log_to_logger.delay(
                {
                    "log_group": self.log_group,
                    "log_stream": self.log_stream,
                    "log_message": record.getMessage(),
                    "level": record.levelname.lower(),
                }
            )
        except Exception:
            self.handleError(record)
