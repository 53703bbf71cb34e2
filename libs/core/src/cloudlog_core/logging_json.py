"""The services' own logs: one JSON object a line on stdout.

Each line has ``timestamp`` (UTC, ISO-8601, milliseconds), ``level`` (lower case), ``logger``
and ``message``, then whatever the record carries from ``extra=`` (a key that would hide one of
these is prefixed ``extra.``), then ``exception`` and ``stack`` when there are. uvicorn's access
lines also carry ``client``, ``method``, ``path``, ``http_version`` and ``status``.

Used by ``cloudlog ingest`` (through uvicorn's ``log_config``), ``cloudlog worker`` and
``cloudlog emulator``: :func:`configure_json_logging`, or :func:`json_logging_config` for
``logging.config.dictConfig``.
"""

from __future__ import annotations

import json
import logging
import logging.config
from datetime import UTC, datetime
from typing import Any

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD_ATTRIBUTES = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys()
    | {"message", "asctime", "taskName"}
)
# Extras that only repeat the message for terminals (uvicorn's ANSI-coloured copy).
_DROPPED_EXTRAS = frozenset({"color_message"})
_CORE_KEYS = ("timestamp", "level", "logger", "message", "exception", "stack")
_ACCESS_LOGGER = "uvicorn.access"
# uvicorn's access record: args (client_addr, method, full_path, http_version, status_code)
_ACCESS_FIELDS = ("client", "method", "path", "http_version", "status")


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines in values are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        args = record.args
        if record.name == _ACCESS_LOGGER and isinstance(args, tuple) and len(args) == 5:
            document.update(zip(_ACCESS_FIELDS, args, strict=True))
        for key, value in vars(record).items():
            if key in _STANDARD_ATTRIBUTES or key in _DROPPED_EXTRAS or key.startswith("_"):
                continue
            document[f"extra.{key}" if key in _CORE_KEYS else key] = value
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            document["exception"] = record.exc_text
        if record.stack_info:
            document["stack"] = self.formatStack(record.stack_info)
        return json.dumps(document, ensure_ascii=False, default=repr, separators=(",", ":"))


def json_logging_config(level: str | int = "INFO") -> dict[str, Any]:
    """A ``dictConfig``: the root logger writes JSON lines to stdout at ``level``; uvicorn's
    loggers hand their records to it rather than print their own text."""
    level_name = logging.getLevelName(level) if isinstance(level, int) else level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {
            "stdout": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stdout",
            }
        },
        "root": {"handlers": ["stdout"], "level": level_name},
        "loggers": {
            name: {"handlers": [], "propagate": True}
            for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
        },
    }


def configure_json_logging(level: str | int = "INFO") -> None:
    """JSON lines on stdout for the whole process, Python's warnings included."""
    logging.config.dictConfig(json_logging_config(level))
    logging.captureWarnings(True)
