"""structlog, shipped: structlog renders to the standard library's logging, whose
``CloudLogHandler`` ships each event dict's keys as the line's fields.

structlog is optional (``cloudlog-logging[structlog]``): this module imports it only in
:func:`configure`. The chain, by hand::

    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,   # structlog's own bound context
            structlog.stdlib.filter_by_level,
            cloudlog_logging.structlog.ship,           # last: event -> message, keys -> fields
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
    )

``log.info("paid", order=42)`` then ships message ``paid`` with field ``order``. Keys the
event already has (``level``, ``timestamp``, ``logger``) are dropped; keys a ``LogRecord``
keeps for itself (``name``, ``args``, ``msg``, ...) get a trailing ``_`` (``name_``).
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from cloudlog_logging.events import STANDARD_RECORD_ATTRIBUTES

# What the event carries itself (its level, timestamp and logger), and structlog's internals.
DROPPED_KEYS = frozenset(
    {"level", "timestamp", "logger", "logger_name", "_record", "_from_structlog"}
)
# Passed to logging as themselves, not as fields.
LOGGING_KEYWORDS = ("exc_info", "stack_info", "stacklevel")


def ship(_logger: Any, _method_name: str, event_dict: MutableMapping[str, Any]) -> dict[str, Any]:
    """structlog's last processor: the keyword arguments of the standard library's log call,
    ``msg`` from ``event`` and every other key in ``extra`` (the line's fields)."""
    kwargs: dict[str, Any] = {"msg": event_dict.get("event", "")}
    extra: dict[str, Any] = {}
    for key, value in event_dict.items():
        if key == "event" or key in DROPPED_KEYS:
            continue
        if key in LOGGING_KEYWORDS:
            if value:
                kwargs[key] = value
            continue
        extra[f"{key}_" if key in STANDARD_RECORD_ATTRIBUTES else key] = value
    if not isinstance(kwargs["msg"], str):
        kwargs["msg"] = str(kwargs["msg"])
    kwargs["extra"] = extra
    return kwargs


def configure(*processors: Any, cache_logger_on_first_use: bool = True) -> None:
    """``structlog.configure`` with the chain above; ``processors`` run before ``ship``."""
    import structlog

    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.filter_by_level,
            *processors,
            ship,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=cache_logger_on_first_use,
    )
