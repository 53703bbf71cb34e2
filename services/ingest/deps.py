"""Dependency aliases for the routes."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from cloudlog.tenants import Tenant, TenantRegistry
from services.ingest.pipeline import WritePipeline
from services.ingest.quotas import Quotas
from services.ingest.settings import IngestSettings

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
