"""Dependency aliases for the routes."""

from __future__ import annotations

import email.message
import json
import re
import time
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param
from pydantic import ValidationError
from pydantic_core import from_json

from cloudlog_ingest.bodylimit import UNAUTHORIZED_DETAIL
from cloudlog_ingest.pipeline import WritePipeline
from cloudlog_ingest.quotas import Quotas
from cloudlog_ingest.schemas import (
    INCOMING_BATCH,
    MAX_FIELDS_DEPTH,
    BatchRequest,
    IncomingEvent,
)
from cloudlog_ingest.settings import IngestSettings
from cloudlog_ingest.tenants import Tenant, TenantStore

_bearer = HTTPBearer(auto_error=False, description="The tenant's API key.")
UNAUTHORIZED = HTTPException(
    status.HTTP_401_UNAUTHORIZED,
    detail=UNAUTHORIZED_DETAIL,
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


def _registry_of(state: Any) -> TenantStore:
    """The tenant registry, re-read when its file changed (at most every reload interval).
    A registry polled in the background (the DynamoDB table: app.py) is only returned."""
    registry: TenantStore = state.tenants
    if getattr(state, "tenants_polled", False):
        return registry
    now = time.monotonic()
    if now - state.tenants_checked >= state.tenants_reload_seconds:
        state.tenants_checked = now
        if registry.reload():
            state.quotas.forget_all_but({tenant.name for tenant in registry.tenants()})
    return registry


def _registry(request: Request) -> TenantStore:
    return _registry_of(request.app.state)


# Where ``authenticate_scope`` leaves the tenant it found, for ``_tenant``.
TENANT_SCOPE_KEY = "cloudlog.tenant"


def authenticate_scope(scope: MutableMapping[str, Any]) -> str | None:
    """The tenant whose key the request's ``Authorization`` header carries (its name; the
    tenant is kept in the scope), or None: from the headers alone, before any body is read
    (bodylimit.py). Parsed as ``HTTPBearer`` parses it."""
    authorization: str | None = None
    for key, value in scope.get("headers") or []:
        if key == b"authorization":
            authorization = value.decode("latin-1")
            break
    scheme, key = get_authorization_scheme_param(authorization)
    if not (authorization and scheme and key) or scheme.lower() != "bearer":
        return None
    tenant = _registry_of(scope["app"].state).authenticate(key)
    if tenant is None:
        return None
    scope[TENANT_SCOPE_KEY] = tenant
    return tenant.name


def _tenant(
    request: Request,
    credentials: HTTPAuthorizationCredentials | None = Depends(_bearer),  # noqa: B008
) -> Tenant:
    found: Tenant | None = request.scope.get(TENANT_SCOPE_KEY)
    if found is not None:  # authenticated from the headers already
        return found
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

    A body that does not parse is refused at once (422 ``json_invalid``, or 400); schema
    errors are kept for later, with ``loc`` starting at ``body``.
    Bodies ``json.loads`` takes and pydantic's JSON parser does not (a UTF-8 BOM, UTF-16,
    lone surrogates) are parsed here as they were; a lone surrogate in any text field is then a
    422 naming the field (``schemas._valid_unicode``), never something the journal or the writer
    would choke on.
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
        except RecursionError as error:
            raise RequestValidationError(
                [
                    {
                        "type": "json_invalid",
                        "loc": ("body",),
                        "msg": "JSON decode error",
                        "input": {},
                        "ctx": {"error": "nested too deeply"},
                    }
                ]
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

    The tenant was authenticated from the headers before the body was read (bodylimit.py).
    Anything the fast path refuses goes the way FastAPI would take it.
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
        except ValidationError as error:
            if (too_deep := _nesting_error(body, error)) is not None:
                raise RequestValidationError([too_deep]) from None
    return _as_typed_body(body, is_json)


_RECURSION_LIMIT = re.compile(r"recursion limit exceeded at line (\d+) column (\d+)")


def _nesting_error(body: bytes, error: ValidationError) -> dict[str, Any] | None:
    """For a body nested deeper than pydantic's JSON parser goes (about 200 levels), the 422
    naming the field that is too deep, found by parsing what comes before the deep point
    (``allow_partial``), or None for any other error. Nothing recurses over the deep part:
    ``json.loads`` would, and 952 levels raised RecursionError (a 500)."""
    details = error.errors(include_url=False)
    found = _RECURSION_LIMIT.search(details[0]["msg"]) if details else None
    if found is None:
        return None
    line, column = int(found[1]), int(found[2])
    start = 0
    for _ in range(line - 1):
        start = body.index(b"\n", start) + 1
    location: tuple[str | int, ...] = ("body",)
    try:
        partial = from_json(body[: max(start + column - 2, 0)], allow_partial=True)
    except ValueError:
        partial = None
    events = partial.get("events") if isinstance(partial, dict) else None
    if isinstance(events, list) and events and isinstance(events[-1], dict) and events[-1]:
        location = ("body", "events", len(events) - 1, list(events[-1])[-1])
    return {
        "type": "value_error",
        "loc": location,
        "msg": f"Value error, at most {MAX_FIELDS_DEPTH} levels of nested objects and arrays",
        "input": None,
    }


BatchBodyDep = Annotated[BatchBody, Depends(_batch_body)]
