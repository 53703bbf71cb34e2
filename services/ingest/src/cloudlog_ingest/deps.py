"""Dependency aliases for the routes."""

from __future__ import annotations

import email.message
import json
import time
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import ValidationError

from cloudlog_ingest.pipeline import WritePipeline
from cloudlog_ingest.quotas import Quotas
from cloudlog_ingest.schemas import INCOMING_BATCH, BatchRequest, IncomingEvent
from cloudlog_ingest.settings import IngestSettings
from cloudlog_ingest.tenants import Tenant, TenantRegistry

_bearer = HTTPBearer(auto_error=False, description="The tenant's API key.")
UNAUTHORIZED = HTTPException(
    status.HTTP_401_UNAUTHORIZED,
    detail="a valid API key is required: Authorization: Bearer <key>",
    headers={"WWW-Authenticate": "Bearer"},
)


def _pipeline(request: Request) -> WritePipeline:
    pipeline: WritePipeline = request.app.state.pipeline
    return pipeline


def _settings(request: Request) -> IngestSettings:
    settings: IngestSettings = request.app.state.settings
    return settings


PipelineDep = Annotated[WritePipeline, Depends(_pipeline)]
SettingsDep = Annotated[IngestSettings, Depends(_settings)]


def _registry(request: Request) -> TenantRegistry:
    """The tenant registry, re-read when its file changed (at most every reload interval)."""
    state = request.app.state
    registry: TenantRegistry = state.tenants
    now = time.monotonic()
    if now - state.tenants_checked >= state.tenants_reload_seconds:
        state.tenants_checked = now
        if registry.reload():
            state.quotas.forget_all_but({tenant.name for tenant in registry.tenants()})
    return registry


def _tenant(
    request: Request,
    credentials: HTTPAuthorizationCredentials | None = Depends(_bearer),  # noqa: B008
) -> Tenant:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise UNAUTHORIZED
    tenant = _registry(request).authenticate(credentials.credentials)
    if tenant is None:
        raise UNAUTHORIZED
    return tenant


def _quotas(request: Request) -> Quotas:
    quotas: Quotas = request.app.state.quotas
    return quotas


TenantDep = Annotated[Tenant, Depends(_tenant)]
QuotasDep = Annotated[Quotas, Depends(_quotas)]


@dataclass(frozen=True, slots=True)
class BatchBody:
    """The body of ``POST /v1/logs``: its events, or the schema errors to answer once the
    tenant is authenticated (``validated``)."""

    events: list[IncomingEvent]
    errors: list[dict[str, Any]]

    def validated(self) -> list[IncomingEvent]:
        if self.errors:
            raise RequestValidationError(self.errors)
        return self.events


def _is_json(content_type: str | None) -> bool:
    """FastAPI's test for a JSON body (fastapi/routing.py, ``get_request_handler``)."""
    if not content_type:
        return False
    message = email.message.Message()
    message["content-type"] = content_type
    if message.get_content_maintype() != "application":
        return False
    subtype = message.get_content_subtype()
    return subtype == "json" or subtype.endswith("+json")


def _as_typed_body(body: bytes, is_json: bool) -> BatchBody:
    """What FastAPI makes of a body typed ``BatchRequest``, for bodies the fast path refused.

    A body that does not parse is refused at once (422 ``json_invalid``, or 400), before
    authentication; schema errors are kept for later, with ``loc`` starting at ``body``.
    Bodies ``json.loads`` takes and pydantic's JSON parser does not (a UTF-8 BOM, UTF-16,
    lone surrogates) are accepted here as they were.
    """
    if not body:
        missing = {"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}
        return BatchBody([], [missing])
    value: Any = body
    if is_json:
        try:
            value = json.loads(body)
        except json.JSONDecodeError as error:
            raise RequestValidationError(
                [
                    {
                        "type": "json_invalid",
                        "loc": ("body", error.pos),
                        "msg": "JSON decode error",
                        "input": {},
                        "ctx": {"error": error.msg},
                    }
                ],
                body=error.doc,
            ) from error
        except Exception as error:
            raise _unreadable() from error
    try:
        batch = BatchRequest.model_validate(value, from_attributes=True)
    except ValidationError as error:
        return BatchBody(
            [],
            [
                {**detail, "loc": ("body", *detail["loc"])}
                for detail in error.errors(include_url=False)
            ],
        )
    return BatchBody(
        [
            IncomingEvent(
                event_id=event.event_id,
                timestamp=event.timestamp,
                log_group=event.log_group,
                log_stream=event.log_stream,
                message=event.message,
                level=event.level,
                logger=event.logger,
                fields=event.fields,
            )
            for event in batch.events
        ],
        [],
    )


def _unreadable() -> HTTPException:
    return HTTPException(status.HTTP_400_BAD_REQUEST, detail="There was an error parsing the body")


async def _batch_body(request: Request) -> BatchBody:
    """The batch, validated by pydantic-core straight from the raw bytes.

    Declared before the tenant, this runs where FastAPI reads a typed body: before
    authentication. Anything the fast path refuses goes the way FastAPI would take it.
    """
    try:
        body = await request.body()
    except HTTPException:
        raise
    except Exception as error:
        raise _unreadable() from error
    is_json = bool(body) and _is_json(request.headers.get("content-type"))
    if is_json:
        try:
            return BatchBody(INCOMING_BATCH.validate_json(body)["events"], [])
        except ValidationError:
            pass
    return _as_typed_body(body, is_json)


BatchBodyDep = Annotated[BatchBody, Depends(_batch_body)]
