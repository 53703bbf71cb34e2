"""A ``logging.LogRecord`` becomes a plain, JSON-ready event dict. No I/O, a few microseconds."""

from __future__ import annotations

import itertools
import logging
import os
import sys
import traceback
import uuid
from typing import Any

from cloudlog_logging.context import BOUND, EMPTY
from cloudlog_logging.values import json_safe

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_PLAIN_RECORD_ATTRIBUTES = vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys()
STANDARD_RECORD_ATTRIBUTES = frozenset(_PLAIN_RECORD_ATTRIBUTES | {"message", "asctime"})
# A record with no more attributes than a plain one has no ``extra=``: the common case, told
# apart without comparing every attribute name.
PLAIN_RECORD_ATTRIBUTE_COUNT = len(_PLAIN_RECORD_ATTRIBUTES)
REQUEST_ID_HEADER = "X-Request-ID"
# OpenTelemetry's API module: looked up in sys.modules, never imported here. A process that has
# not imported it has no span to report, and pays one dict lookup per line.
OTEL_TRACE_MODULE = "opentelemetry.trace"
# Bound once: every log call passes here, and each global and attribute lookup costs.
_modules = sys.modules
_bound_fields = BOUND.get


def level_name(levelno: int) -> str:
    """Map any numeric level (custom ones too) onto the five the ingest API knows."""
    known = STANDARD_LEVEL_NAMES.get(levelno)
    if known is not None:
        return known
    if levelno >= logging.CRITICAL:
        return "critical"
    if levelno >= logging.ERROR:
        return "error"
    if levelno >= logging.WARNING:
        return "warning"
    if levelno >= logging.INFO:
        return "info"
    return "debug"


STANDARD_LEVEL_NAMES = {
    logging.CRITICAL: "critical",
    logging.ERROR: "error",
    logging.WARNING: "warning",
    logging.INFO: "info",
    logging.DEBUG: "debug",
}


def trace_ids(trace: Any, fields: dict[str, Any]) -> None:
    """Add the active OpenTelemetry span's ``trace_id`` (32 hex digits) and ``span_id`` (16), the
    W3C form CloudWatch and X-Ray correlate logs with, and ``xray_trace_id`` (``1-...-...``)."""
    try:
        span_context = trace.get_current_span().get_span_context()
        if not span_context.is_valid:
            return
        trace_id = format(span_context.trace_id, "032x")
        fields["trace_id"] = trace_id
        fields["span_id"] = format(span_context.span_id, "016x")
        fields["xray_trace_id"] = f"1-{trace_id[:8]}-{trace_id[8:]}"
    except Exception:  # a broken tracer never costs a line
        return


def event_from_record(
    record: logging.LogRecord,
    *,
    log_group: str,
    log_stream: str,
    fields: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The event of ``record``. Its fields, later ones winning: the context's bound fields
    (context.py), ``fields`` (a new dict the caller gives away), the active OpenTelemetry
    span's ids, the record's ``extra=``, its exception and stack."""
    bound = _bound_fields()
    if fields is None:
        fields = {} if bound is EMPTY else dict(bound)
    elif bound is not EMPTY:
        fields = {**bound, **fields}
    if OTEL_TRACE_MODULE in _modules:
        trace_ids(_modules[OTEL_TRACE_MODULE], fields)
    return record_event(record, log_group=log_group, log_stream=log_stream, fields=fields)


def record_event(
    record: logging.LogRecord, *, log_group: str, log_stream: str, fields: dict[str, Any]
) -> dict[str, Any]:
    """The event of ``record`` with ``fields`` (a new dict the caller gives away), then the
    record's ``extra=``, exception and stack. No context: the Flask extension's hot path,
    which ships its request's fields (flask_cloudlog.events)."""
    attributes = vars(record)
    if (
        len(attributes) > PLAIN_RECORD_ATTRIBUTE_COUNT
        and attributes.keys() - STANDARD_RECORD_ATTRIBUTES
    ):  # extra= was given: keep its order
        for key, value in attributes.items():
            if key not in STANDARD_RECORD_ATTRIBUTES and not key.startswith("_"):
                fields[key] = json_safe(value)
    if record.exc_info:
        fields["exception"] = "".join(traceback.format_exception(*record.exc_info)).rstrip()
    elif record.exc_text:
        fields["exception"] = record.exc_text
    if record.stack_info:
        fields["stack"] = record.stack_info
    return make_event(
        message=record.getMessage(),
        level=level_name(record.levelno),
        timestamp_ms=int(record.created * 1000),
        logger=record.name,
        log_group=log_group,
        log_stream=log_stream,
        fields=fields,
    )


class EventIds:
    """Unique event ids, cheaply: a random per-process prefix and a counter.

    ``uuid4()`` for every record cost a quarter of the app's logging CPU in the benchmark. A
    forked child draws its own prefix (``os.register_at_fork``, not an ``os.getpid()`` system
    call per id), so parent and children never share ids.
    """

    def __init__(self) -> None:
        self._new_prefix()
        os.register_at_fork(after_in_child=self._new_prefix)

    def _new_prefix(self) -> None:
        self._prefix = uuid.uuid4().hex[:16]
        self._counter = itertools.count()

    def next(self) -> str:
        return f"{self._prefix}{next(self._counter):x}"


event_ids = EventIds()
# Request ids made here (no X-Request-ID header): unique the same way, without a uuid4 (and its
# getrandom call) on the first log line of every request.
request_ids = EventIds()


def make_event(
    *,
    message: str,
    level: str,
    timestamp_ms: int,
    logger: str | None,
    log_group: str,
    log_stream: str,
    fields: dict[str, Any],
) -> dict[str, Any]:
    """The wire form of one event, as ``POST /v1/logs`` takes it."""
    event: dict[str, Any] = {
        "event_id": event_ids.next(),
        "timestamp": timestamp_ms,
        "log_group": log_group,
        "log_stream": log_stream,
        "message": message,
        "level": level,
        "logger": logger,
    }
    if fields:
        event["fields"] = fields
    return event
