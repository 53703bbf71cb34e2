"""The Flask request's fields for events; the event itself is cloudlog_logging.events'."""

from __future__ import annotations

import logging
from typing import Any

from flask import g, has_request_context, request

from cloudlog_logging.events import (
    PLAIN_RECORD_ATTRIBUTE_COUNT,
    REQUEST_ID_HEADER,
    STANDARD_LEVEL_NAMES,
    STANDARD_RECORD_ATTRIBUTES,
    EventIds,
    event_ids,
    level_name,
    make_event,
    record_event,
    request_ids,
)
from cloudlog_logging.values import MAX_JSON_DEPTH, json_safe

__all__ = [
    "G_REQUEST_FIELDS",
    "G_REQUEST_ID",
    "MAX_JSON_DEPTH",
    "PLAIN_RECORD_ATTRIBUTE_COUNT",
    "REQUEST_ID_HEADER",
    "STANDARD_LEVEL_NAMES",
    "STANDARD_RECORD_ATTRIBUTES",
    "EventIds",
    "event_from_record",
    "event_ids",
    "json_safe",
    "level_name",
    "make_event",
    "request_fields",
    "request_id_of",
    "request_ids",
]

G_REQUEST_ID = "_cloudlog_request_id"  # namespaced on flask.g
# (request, {request_id, path, method}): computed once per request, kept on flask.g.
G_REQUEST_FIELDS = "_cloudlog_request_fields"


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
    """The event of ``record`` with the current Flask request's fields."""
    return record_event(record, log_group=log_group, log_stream=log_stream, fields=request_fields())
