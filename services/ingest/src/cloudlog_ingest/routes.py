"""The log endpoints: the seed contract ``POST /logs`` and the batch API ``POST /v1/logs``.

A name refused by confinement (confinement.py) is a 403 naming the field in ``POST /logs``,
which answers at once with no per-event result to carry it. In ``POST /v1/logs`` it is that
event's alone: it is answered ``rejected`` with reason ``forbidden_name`` and a detail naming
the field and the rule, and reported to the tenant's ``<prefix>_cloudlog`` group, stream
``_rejected``, while the other events of the batch are written.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from json.encoder import encode_basestring
from typing import Any

from fastapi import APIRouter, HTTPException, Response, status
from fastapi.exceptions import RequestValidationError

from cloudlog_ingest.confinement import (
    REJECTED_STREAM,
    Refusal,
    check_stream,
    confine_each,
    refusals_group,
    resolve_group,
)
from cloudlog_ingest.deps import BatchBodyDep, PipelineDep, QuotasDep, SettingsDep, TenantDep
from cloudlog_ingest.idempotency import BatchInProgress
from cloudlog_ingest.pipeline import (
    REJECTED_QUOTE_CHARS,
    Overloaded,
    ShuttingDown,
    WritePipeline,
)
from cloudlog_ingest.quotas import Quotas
from cloudlog_ingest.rendering import encode_fields, render_event, render_message
from cloudlog_ingest.schemas import (
    MAX_FIELDS_BYTES,
    MAX_FIELDS_DEPTH,
    BatchRequest,
    BatchResponse,
    IncomingEvent,
    Level,
    QueuedResponse,
    SeedLogRequest,
    fields_size_error,
)
from cloudlog_ingest.settings import IngestSettings
from cloudlog_ingest.tenants import Tenant
from cloudlog_writer.models import EventResult, LogEvent, Outcome

logger = logging.getLogger(__name__)
router = APIRouter()
# The reason of an event of POST /v1/logs refused for its group or stream name.
FORBIDDEN_NAME = "forbidden_name"


def _confine(tenant: Tenant, group: str, stream: str, location: str = "") -> tuple[str, str]:
    """The tenant's own group and the stream, or 403 naming the field."""
    try:
        return (
            resolve_group(tenant, group, field=f"{location}log_group"),
            check_stream(stream, field=f"{location}log_stream"),
        )
    except Refusal as refusal:
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail=str(refusal)) from None


def _submit(
    pipeline: WritePipeline,
    settings: IngestSettings,
    quotas: Quotas,
    tenant: Tenant,
    events: list[LogEvent],
    idempotent: bool = False,
) -> asyncio.Future[list[EventResult]]:
    wait = quotas.admit(tenant, len(events))
    if wait:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            detail=f"over the rate of {tenant.rate:g} events/s (burst {tenant.burst})",
            headers={"Retry-After": str(wait)},
        )
    retry_after = {"Retry-After": str(settings.retry_after_seconds)}
    try:
        return pipeline.submit(events, tenant=tenant.name, idempotent=idempotent)
    except Overloaded as exc:  # the pipeline's bounds, or its new-stream quota (pipeline.py)
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            detail=exc.detail,
            headers={"Retry-After": str(exc.retry_after)} if exc.retry_after else retry_after,
        ) from None
    except ShuttingDown:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            detail="the service is shutting down; retry later",
            headers=retry_after,
        ) from None


def _check_message_lengths(
    settings: IngestSettings, located: list[tuple[tuple[str | int, ...], str]]
) -> None:
    """422, in the same shape as schema errors, for messages over ``max_message_chars``."""
    limit = settings.max_message_chars
    errors = [
        {
            "loc": ("body", *location),
            "msg": f"String should have at most {limit} characters",
            "type": "string_too_long",
            "input": None,
        }
        for location, message in located
        if len(message) > limit
    ]
    if errors:
        raise RequestValidationError(errors)


def _report_background_results(future: asyncio.Future[list[EventResult]]) -> None:
    if future.cancelled():
        return
    if (error := future.exception()) is not None:
        logger.error("background write failed: %s", error)
        return
    for result in future.result():
        if not result.written:
            logger.warning(
                "event %s rejected: %s %s", result.event_id, result.reason, result.detail or ""
            )


@router.post("/logs", response_model=QueuedResponse, status_code=status.HTTP_200_OK)
async def post_log(
    payload: SeedLogRequest,
    tenant: TenantDep,
    pipeline: PipelineDep,
    settings: SettingsDep,
    quotas: QuotasDep,
) -> QueuedResponse:
    """The seed contract: answered at once; the line is written in the background."""
    group, stream = _confine(tenant, payload.log_group, payload.log_stream)
    _check_message_lengths(settings, [(("log_message",), payload.log_message)])
    event_id = uuid.uuid4().hex
    event = LogEvent(
        event_id=event_id,
        log_group=group,
        log_stream=stream,
        timestamp=int(time.time() * 1000),
        message=render_message(
            level=payload.level.value, message=payload.log_message, event_id=event_id
        ),
    )
    _submit(pipeline, settings, quotas, tenant, [event]).add_done_callback(
        _report_background_results
    )
    return QueuedResponse()


def _encode_all_fields(events: list[IncomingEvent]) -> list[str | None]:
    """Each event's ``fields`` as stored (None for none), or 422 for those over the bounds, in
    the shape and order of the schema's own errors (``schemas._bounded_fields``)."""
    encoded: list[str | None] = []
    errors: list[dict[str, Any]] = []
    for index, event in enumerate(events):
        fields = event.get("fields")
        if not fields:
            encoded.append(None)
            continue
        text = encode_fields(fields)
        encoded.append(text)
        # The bound counts json.dumps' default separators (", ", ": "): at most one byte more
        # for each separator of the compact text, so at most twice its size.
        try:
            surely_within = 2 * len(text.encode()) <= MAX_FIELDS_BYTES
        except UnicodeEncodeError:
            surely_within = False
        # Fewer brackets than levels allowed (counting those in strings too): not too deep.
        if surely_within and text.count("{") + text.count("[") > MAX_FIELDS_DEPTH:
            surely_within = False
        if not surely_within and (problem := fields_size_error(fields)) is not None:
            errors.append(
                {
                    "type": "value_error",
                    "loc": ("body", "events", index, "fields"),
                    "msg": f"Value error, {problem}",
                    "input": fields,
                }
            )
    if errors:
        raise RequestValidationError(errors)
    return encoded


def _check_batch_message_lengths(settings: IngestSettings, events: list[IncomingEvent]) -> None:
    limit = settings.max_message_chars
    if any(len(event["message"]) > limit for event in events):
        _check_message_lengths(
            settings,
            [
                (("events", index, "message"), event["message"])
                for index, event in enumerate(events)
            ],
        )


_NONE_FORBIDDEN: Mapping[int, str] = {}


def _batch_answer(
    results: Sequence[EventResult], forbidden: Mapping[int, str] = _NONE_FORBIDDEN
) -> Response:
    """``BatchResponse`` as pydantic serialises it (the bytes FastAPI sent for the model), put
    together from strings: no model or dict per event. ``forbidden``: position -> detail of the
    events refused for their names (``results`` holds a placeholder there)."""
    written = 0
    parts: list[str] = []
    for index, result in enumerate(results):
        if forbidden and index in forbidden:
            parts.append(
                '{"event_id":'
                + encode_basestring(result.event_id)
                + ',"status":"rejected","reason":"'
                + FORBIDDEN_NAME
                + '","detail":'
                + encode_basestring(forbidden[index])
                + "}"
            )
            continue
        if result.outcome is Outcome.WRITTEN:
            written += 1
        parts.append(
            '{"event_id":'
            + encode_basestring(result.event_id)
            + ',"status":'
            + encode_basestring(result.outcome.value)
            + ',"reason":'
            + ("null" if result.reason is None else encode_basestring(result.reason.value))
            + ',"detail":'
            + ("null" if result.detail is None else encode_basestring(result.detail))
            + "}"
        )
    content = (
        f'{{"written":{written},"rejected":{len(results) - written},"results":[{",".join(parts)}]}}'
    )
    return Response(content.encode(), media_type="application/json")


def refusal_report(event: IncomingEvent, detail: str, group: str, now_ms: int) -> LogEvent:
    """The line written to ``<prefix>_cloudlog`` / ``_rejected`` for an event refused for its
    names: as the pipeline's reports (pipeline.rejection_report), with the names as given."""
    message = event["message"]
    quoted = message[:REJECTED_QUOTE_CHARS]
    document = {
        "event_id": event["event_id"],
        "reason": FORBIDDEN_NAME,
        "detail": detail,
        "log_group": event["log_group"],
        "log_stream": event["log_stream"],
        "timestamp": event["timestamp"],
        "message": quoted,
        "message_truncated": len(quoted) < len(message),
    }
    return LogEvent(
        event_id=f"{event['event_id']}.rejected",
        log_group=group,
        log_stream=REJECTED_STREAM,
        timestamp=now_ms,
        message=json.dumps(document, ensure_ascii=False, separators=(",", ":")),
    )


# Registered before its documented twin below, this route serves every POST /v1/logs: it
# validates the raw body itself (deps.BatchBody), which a typed parameter would not let it do.
@router.post("/v1/logs", include_in_schema=False)
async def post_batch(
    body: BatchBodyDep,
    tenant: TenantDep,
    pipeline: PipelineDep,
    settings: SettingsDep,
    quotas: QuotasDep,
) -> Response:
    """Write a batch and answer once every event is written or rejected, one result each."""
    incoming = body.validated()
    fields = _encode_all_fields(incoming)
    if len(incoming) > settings.max_events_per_request:
        raise RequestValidationError(
            [
                {
                    "loc": ("body", "events"),
                    "msg": f"List should have at most {settings.max_events_per_request} items",
                    "type": "too_long",
                    "input": None,
                }
            ]
        )
    _check_batch_message_lengths(settings, incoming)
    names = confine_each(
        tenant,
        ((event["log_group"], event["log_stream"]) for event in incoming),
        field_prefix="events.",
    )
    forbidden: dict[int, str] = {}
    reports: list[LogEvent] = []
    if any(isinstance(outcome, Refusal) for outcome in names):
        report_group, now_ms = refusals_group(tenant), int(time.time() * 1000)
        for index, (event, outcome) in enumerate(zip(incoming, names, strict=True)):
            if isinstance(outcome, Refusal):
                forbidden[index] = str(outcome)
                reports.append(refusal_report(event, forbidden[index], report_group, now_ms))
    events = [
        LogEvent(
            event["event_id"],
            outcome[0],
            outcome[1],
            event["timestamp"],
            render_event(
                event.get("level", Level.INFO).value,
                event["message"],
                event["event_id"],
                event.get("logger"),
                fields_json,
            ),
        )
        for event, outcome, fields_json in zip(incoming, names, fields, strict=True)
        if not isinstance(outcome, Refusal)
    ]
    # shield: a client that hangs up must not cancel the write of what it handed over.
    # idempotent: a redelivery of this batch, on any replica, is recognised (idempotency.py).
    submitted = _submit(pipeline, settings, quotas, tenant, events + reports, idempotent=True)
    try:
        results = await asyncio.shield(submitted)
    except BatchInProgress as exc:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            detail=str(exc),
            headers={"Retry-After": str(exc.retry_after)},
        ) from None
    if not forbidden:
        return _batch_answer(results)
    _log_unreported(reports, results[len(events) :])
    written = iter(results[: len(events)])
    answered = [
        EventResult(event["event_id"], Outcome.REJECTED) if index in forbidden else next(written)
        for index, event in enumerate(incoming)
    ]
    return _batch_answer(answered, forbidden)


def _log_unreported(reports: list[LogEvent], results: Sequence[EventResult]) -> None:
    for report, result in zip(reports, results, strict=True):
        if not result.written:
            logger.error(
                "could not report refused event %s to %s/%s: %s",
                report.event_id,
                report.log_group,
                REJECTED_STREAM,
                result.detail,
            )


@router.post("/v1/logs", response_model=BatchResponse, name="post_batch")
async def document_post_batch(
    payload: BatchRequest,
    tenant: TenantDep,
    pipeline: PipelineDep,
    settings: SettingsDep,
    quotas: QuotasDep,
) -> BatchResponse:
    """Write a batch and answer once every event is written or rejected, one result each."""
    # Never called: it only gives the OpenAPI document the body, answer and security of
    # post_batch above, which serves the same path and method and comes first.
    raise AssertionError("POST /v1/logs is served by post_batch")
