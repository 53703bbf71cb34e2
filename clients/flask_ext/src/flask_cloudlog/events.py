"""A ``logging.LogRecord`` becomes a plain, JSON-ready event dict. No I/O, a few microseconds."""

from __future__ import annotations

import itertools
import logging
import os
import traceback
import uuid
from typing import Any

from flask import g, has_request_context, request

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_PLAIN_RECORD_ATTRIBUTES = vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys()
STANDARD_RECORD_ATTRIBUTES = frozenset(_PLAIN_RECORD_ATTRIBUTES | {"message", "asctime"})
# A record with no more attributes than a plain one has no ``extra=``: the common case, told
# apart without comparing every attribute name.
PLAIN_RECORD_ATTRIBUTE_COUNT = len(_PLAIN_RECORD_ATTRIBUTES)
REQUEST_ID_HEADER = "X-Request-ID"
G_REQUEST_ID = "_cloudlog_request_id"  # namespaced on flask.g
# (request, {request_id, path, method}): computed once per request, kept on flask.g.
G_REQUEST_FIELDS = "_cloudlog_request_fields"
MAX_JSON_DEPTH = 8


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


def json_safe(value: Any, depth: int = 0) -> Any:
    """Keep JSON types; turn anything else into its ``repr`` so a batch never fails to encode."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if depth >= MAX_JSON_DEPTH:
        return repr(value)
    if isinstance(value, dict):
        return {str(key): json_safe(item, depth + 1) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [json_safe(item, depth + 1) for item in value]
    return repr(value)


def request_id_of(current: Any, namespace: Any) -> str:
    """The request's id: the caller's ``X-Request-ID``, else one made here, kept on ``g``.

    ``current`` and ``namespace`` are the request and ``g`` themselves, not their proxies.
    """
    request_id: str | None = namespace.get(G_REQUEST_ID)
    if request_id is None:
        request_id = current.headers.get(REQUEST_ID_HEADER) or request_ids.next()
        setattr(namespace, G_REQUEST_ID, request_id)
    return request_id


def request_fields() -> dict[str, Any]:
    """``request_id``, ``path`` and ``method`` of the current request, as a new dict.

    Read once per request and kept on ``g`` with the request they describe: ``g`` belongs to
    the app context, which requests pushed inside one app context share. The proxies are
    resolved once here (each ``g.``/``request.`` access through them costs about a microsecond),
    and ``g`` is read with its ``get`` (``getattr`` with a default raises and catches an
    AttributeError inside for a missing name: another microsecond on each request's first line).
    """
    if not has_request_context():
        return {}
    current = request._get_current_object()  # type: ignore[attr-defined]
    namespace = g._get_current_object()
    cached: tuple[Any, dict[str, Any]] | None = namespace.get(G_REQUEST_FIELDS)
    if cached is None or cached[0] is not current:
        fields = {
            "request_id": request_id_of(current, namespace),
            "path": current.path,
            "method": current.method,
        }
        cached = (current, fields)
        setattr(namespace, G_REQUEST_FIELDS, cached)
    return cached[1].copy()


def event_from_record(
    record: logging.LogRecord, *, log_group: str, log_stream: str
) -> dict[str, Any]:
    fields = request_fields()
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
