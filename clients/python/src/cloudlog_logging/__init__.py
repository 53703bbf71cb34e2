"""cloudlog for any Python process: a logging handler with a bounded buffer and one dispatcher
thread per process, context fields in contextvars, and adapters for ASGI (asgi.py), Celery
(celery.py), structlog (structlog.py) and OpenTelemetry (span ids on every line in a span)."""

from cloudlog_logging import context
from cloudlog_logging.context import bind, unbind
from cloudlog_logging.handler import CloudLogHandler, install
from cloudlog_logging.settings import ClientSettings, CloudLogConfigError
from cloudlog_logging.state import LogShipper

__all__ = [
    "ClientSettings",
    "CloudLogConfigError",
    "CloudLogHandler",
    "LogShipper",
    "bind",
    "context",
    "install",
    "unbind",
]
