"""The log endpoints: the seed contract ``POST /logs`` and the batch API ``POST /v1/logs``."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

from fastapi import APIRouter, HTTPException, status
from fastapi.exceptions import RequestValidationError

from cloudlog.tenants import Tenant
from services.ingest.confinement import Refusal, check_stream, resolve_group
from services.ingest.deps import PipelineDep, QuotasDep, SettingsDep, TenantDep
from services.ingest.pipeline import Overloaded, ShuttingDown, WritePipeline
from services.ingest.quotas import Quotas
from services.ingest.rendering import render_message
from services.ingest.schemas import (
    BatchRequest,
    BatchResponse,
    EventResultOut,
    QueuedResponse,
    SeedLogRequest,
)
from services.ingest.settings import IngestSettings
from services.writer.models import EventResult, LogEvent

logger = logging.getLogger(__name__)
router = APIRouter()


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
        return pipeline.submit(events, tenant=tenant.name)
    except Overloaded:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            detail="too many events are pending; retry later",
            headers=retry_after,
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


@router.post("/v1/logs", response_model=BatchResponse)
async def post_batch(
    payload: BatchRequest,
    tenant: TenantDep,
    pipeline: PipelineDep,
    settings: SettingsDep,
    quotas: QuotasDep,
) -> BatchResponse:
    """Write a batch and answer once every event is written or rejected, one result each."""
    if len(payload.events) > settings.max_events_per_request:
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
    _check_message_lengths(
        settings,
        [(("events", i, "message"), item.message) for i, item in enumerate(payload.events)],
    )
    names = [
        _confine(tenant, item.log_group, item.log_stream, f"events.{i}.")
        for i, item in enumerate(payload.events)
    ]
    events = [
        LogEvent(
            event_id=item.event_id,
            log_group=group,
            log_stream=stream,
            timestamp=item.timestamp,
            message=render_message(
                level=item.level.value,
                message=item.message,
                event_id=item.event_id,
                logger=item.logger,
                fields=item.fields,
            ),
        )
        for item, (group, stream) in zip(payload.events, names, strict=True)
    ]
    # shield: a client that hangs up must not cancel the write of what it handed over.
    results = await asyncio.shield(_submit(pipeline, settings, quotas, tenant, events))
    outputs = [
        EventResultOut(
            event_id=result.event_id,
            status=result.outcome.value,
            reason=result.reason.value if result.reason else None,
            detail=result.detail,
        )
        for result in results
    ]
    written = sum(1 for result in results if result.written)
    return BatchResponse(written=written, rejected=len(results) - written, results=outputs)
