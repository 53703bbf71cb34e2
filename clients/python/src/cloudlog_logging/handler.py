"""``CloudLogHandler``: a ``logging.Handler`` for any Python process. Enrich, buffer, return.

Configured by keyword options (``logging.config.dictConfig`` passes a handler's extra keys as
options), else by ``CLOUDLOG_*`` environment variables, else the defaults (settings.py)::

    logging.config.dictConfig({
        "version": 1,
        "handlers": {"cloudlog": {"class": "cloudlog_logging.CloudLogHandler",
                                  "log_group": "batch/jobs"}},
        "root": {"handlers": ["cloudlog"], "level": "INFO"},
    })

It does no I/O: the process's one dispatcher thread (delivery.py) starts with the first event,
publishes every ``CLOUDLOG_FLUSH_INTERVAL`` and flushes at exit within
``CLOUDLOG_SHUTDOWN_TIMEOUT``. Records of the libraries on the delivery path are not shipped.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from pathlib import Path
from typing import Any, Protocol

from pydantic import ValidationError

from cloudlog_logging.events import event_from_record
from cloudlog_logging.settings import ClientSettings, CloudLogConfigError
from cloudlog_logging.state import LogShipper, refuse_configured_names

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
    "cloudlog_logging",
    "cloudlog_core",
    "cloudlog_wire",
    "cloudlog_worker",
    "cloudlog_ingest",
    "cloudlog_writer",
    "cloudlog_cli",
    "cloudlog_devtools",
)

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


class EventSink(Protocol):
    """What a handler hands events to: a ``LogShipper`` (a Flask app's state is one)."""

    log_stream: str

    @property
    def log_group(self) -> str: ...

    def accept(self, event: dict[str, Any]) -> None: ...


class LockFreeHandler(logging.Handler):
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


def program_log_group() -> str:
    """``cloudlog/<program>``: the running script's name, made a valid group name."""
    program = Path(sys.argv[0]).stem if sys.argv and sys.argv[0] else ""
    name = re.sub(r"[^.\-_#A-Za-z0-9]", "-", program)
    name = re.sub(r"\.{2,}", ".", name).strip("-.") or "python"
    return f"cloudlog/{name}"


def client_settings(**options: Any) -> ClientSettings:
    """Settings from ``options`` (names of ``ClientSettings`` fields), else ``CLOUDLOG_*``
    environment variables, validated like the Flask extension's: a clear error at once."""
    unknown = sorted(set(options) - set(ClientSettings.model_fields))
    if unknown:
        raise CloudLogConfigError(f"unknown cloudlog option(s): {', '.join(unknown)}")
    try:
        settings = ClientSettings(**options)
    except (ValidationError, ValueError) as exc:
        raise CloudLogConfigError(f"invalid cloudlog configuration: {exc}") from exc
    group = settings.log_group or program_log_group()
    refuse_configured_names(group, settings.log_stream)
    return settings.model_copy(update={"log_group": group})


class CloudLogHandler(LockFreeHandler):
    """Ships records to CloudWatch Logs through cloudlog, from any Python process.

    ``CloudLogHandler(log_group="batch/jobs", level="INFO")``: any ``CLOUDLOG_*`` setting as a
    lower-case keyword (``flush_interval=0.5``); unset ones from the environment. ``level``
    defaults to ``CLOUDLOG_LEVEL``. ``shipper``: hand events to this one instead of a new one.
    With ``enabled=False`` (``CLOUDLOG_ENABLED=false``) events are kept in ``captured``.
    """

    def __init__(
        self,
        level: int | str | None = None,
        *,
        shipper: LogShipper | None = None,
        **options: Any,
    ) -> None:
        if shipper is None:
            settings = client_settings(**options)
            shipper = LogShipper(settings, deliver=settings.enabled is not False)
        elif options:
            raise TypeError("give settings or a shipper, not both")
        super().__init__(shipper.settings.level if level is None else level)
        self.shipper = shipper
        self._local = threading.local()

    @property
    def captured(self) -> list[dict[str, Any]]:
        return self.shipper.captured

    def stats(self) -> dict[str, int]:
        return self.shipper.stats()

    def emit(self, record: logging.LogRecord) -> None:
        if is_excluded(record.name) or getattr(self._local, "busy", False):
            return
        shipper = self.shipper
        self._local.busy = True  # a log call made while we handle one is not shipped again
        try:
            shipper.accept(
                event_from_record(
                    record, log_group=shipper.log_group, log_stream=shipper.log_stream
                )
            )
        except Exception:
            self.handleError(record)
        finally:
            self._local.busy = False

    def flush(self, timeout: float | None = None) -> None:
        """Publish what was logged so far, waiting at most ``timeout`` (default
        ``CLOUDLOG_SHUTDOWN_TIMEOUT``). ``logging.shutdown`` calls it at exit."""
        if self.shipper.delivering and len(self.shipper.buffer):
            self.shipper.flush(timeout)

    def close(self) -> None:
        """Publish what is left (within ``CLOUDLOG_SHUTDOWN_TIMEOUT``) and stop shipping."""
        self.shipper.close()
        super().close()


def install(logger: logging.Logger | str | None = None, **options: Any) -> CloudLogHandler:
    """Attach a ``CloudLogHandler`` (``options`` as for it) to ``logger`` (default: the root
    logger), lowering the logger's level to the handler's if needed; returns the handler.
    For a script: ``cloudlog_logging.install()`` with ``CLOUDLOG_*`` set in the environment."""
    target = logger if isinstance(logger, logging.Logger) else logging.getLogger(logger)
    handler = CloudLogHandler(**options)
    target.addHandler(handler)
    if target.getEffectiveLevel() > handler.level:
        target.setLevel(handler.level)
    return handler
