"""The FastAPI application. Clients (boto3, the writer) are created in ``lifespan``.

Each app has its own metrics registry (metrics.py), served at ``/metrics`` to the scraper's token
only; ``/readyz`` checks CloudWatch Logs and the writer's backlog (readiness.py). What answers
without a key is listed in README, Threat model (tests/security/test_public_endpoints.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from cloudlog_core.gc_settle import freeze_startup_objects, unfreeze
from cloudlog_ingest import health, routes
from cloudlog_ingest.bodylimit import BodySizeLimit
from cloudlog_ingest.deps import authenticate_scope
from cloudlog_ingest.idempotency import (
    BatchIdempotency,
    ensure_idempotency_table,
    make_dynamodb_client,
)
from cloudlog_ingest.journal import DeliveryJournal, ReadBack
from cloudlog_ingest.metrics import CountRefusals, IngestMetrics
from cloudlog_ingest.pipeline import WriteFunction, WritePipeline, pipeline_options
from cloudlog_ingest.quotas import Quotas
from cloudlog_ingest.readback import event_ids_in_stream
from cloudlog_ingest.readiness import (
    CloudWatchCheck,
    Probe,
    describe_log_groups_probe,
    track_tenant_registry,
)
from cloudlog_ingest.settings import IngestSettings, get_settings
from cloudlog_ingest.tenant_table import open_tenant_store
from cloudlog_ingest.tenants import TenantRegistry, TenantSettings, TenantStore
from cloudlog_writer import (
    CloudWatchWriter,
    GroupOptions,
    WriterObserver,
    WriterSettings,
    make_logs_client,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WriterHandle:
    write: WriteFunction
    close: Callable[[], None]
    read_back: ReadBack  # event ids already stored in a stream's time range


GroupOptionsFor = Callable[[str], GroupOptions]
# Builds the writer, given the options for groups it creates and who watches its calls (the
# metrics); tests may pass their own.
WriterFactory = Callable[[GroupOptionsFor, WriterObserver], WriterHandle]
LOG_ROUTES = frozenset({"/logs", "/v1/logs"})  # whose refusals are counted


def default_writer_factory(
    group_options: GroupOptionsFor, observer: WriterObserver
) -> WriterHandle:
    # No WrittenEvents in the writer: the journal already recognises redelivered events (by
    # group, stream and event_id), durably; a second memory of them would only cost CPU and RAM.
    writer_settings = WriterSettings().model_copy(update={"dedupe_max_entries": 0})
    client = make_logs_client(writer_settings)
    writer = CloudWatchWriter(
        client, writer_settings, group_options=group_options, observer=observer
    )
    return WriterHandle(
        write=writer.write,
        close=writer.close,
        read_back=lambda group, stream, start, end: event_ids_in_stream(
            client, group, stream, start, end
        ),
    )


def _field_path(location: tuple[int | str, ...]) -> str:
    parts = [str(part) for part in location if part != "body"]
    return ".".join(parts) or "body"


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    """422 with FastAPI's ``detail`` list, plus one readable line per field."""
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    messages = [f"{_field_path(tuple(error['loc']))}: {error['msg']}" for error in errors]
    detail = [
        {"loc": list(error["loc"]), "msg": error["msg"], "type": error["type"]} for error in errors
    ]
    return JSONResponse(status_code=422, content={"detail": detail, "errors": messages})


def tenant_group_options(registry: TenantStore, defaults: GroupOptions) -> GroupOptionsFor:
    """Retention, tags and KMS key for a group: its tenant's, else the writer's defaults."""

    def options(group: str) -> GroupOptions:
        tenant = registry.owner_of(group)
        if tenant is None:
            return defaults
        return GroupOptions(
            retention_days=tenant.retention_days or defaults.retention_days,
            kms_key_id=tenant.kms_key_id or defaults.kms_key_id,
            tags={**defaults.tags, **tenant.tags},
        )

    return options


async def _poll_tenants(app: FastAPI, interval: float) -> None:
    """Reload the tenant registry every ``interval`` seconds, in a thread; on a change, forget
    the quotas of tenants that are gone."""
    registry: TenantStore = app.state.tenants
    while True:
        await asyncio.sleep(interval)
        try:
            changed = await asyncio.to_thread(registry.reload)
        except Exception:  # reload keeps the last good registry itself; never stop polling
            logger.exception("tenant registry reload failed")
            continue
        if changed:
            app.state.quotas.forget_all_but({tenant.name for tenant in registry.tenants()})


def idempotency_store(settings: IngestSettings, metrics: IngestMetrics) -> BatchIdempotency | None:
    """The DynamoDB batch records every replica shares, when a table is configured."""
    if not settings.idempotency_table:
        return None
    client = make_dynamodb_client()
    if settings.idempotency_create_table and ensure_idempotency_table(
        client, settings.idempotency_table
    ):
        logger.info("idempotency: created table %s", settings.idempotency_table)
    store = BatchIdempotency(
        client,
        settings.idempotency_table,
        lease_seconds=settings.idempotency_lease_seconds,
        ttl_seconds=settings.idempotency_ttl_seconds,
        done_linger_seconds=settings.idempotency_done_linger_seconds,
        registry=metrics.registry,
    )
    store.start()
    return store


def create_app(
    settings: IngestSettings | None = None,
    writer_factory: WriterFactory | None = None,
    tenant_settings: TenantSettings | None = None,
    cloudwatch_probe: Probe | None = None,
) -> FastAPI:
    """``cloudwatch_probe`` raises when CloudWatch Logs does not answer (for ``/readyz``);
    default: DescribeLogGroups with ``ready_timeout_seconds``."""
    settings = settings or get_settings()
    tenant_settings = tenant_settings or TenantSettings()
    build_writer = writer_factory or default_writer_factory
    metrics = IngestMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        registry = await asyncio.to_thread(open_tenant_store, tenant_settings)
        if not registry.tenants():
            logger.warning(
                "no tenants in %s: every request will be refused (cloudlog tenant create NAME)",
                registry.source,
            )
        app.state.tenants = registry
        app.state.tenants_checked = time.monotonic()
        app.state.tenants_reload_seconds = tenant_settings.tenants_reload_seconds
        app.state.quotas = Quotas()
        # The file is re-read from requests (a stat, at most every reload interval); the table
        # is polled off the event loop, so no request waits on DynamoDB (tenant_table.py).
        app.state.tenants_polled = not isinstance(registry, TenantRegistry)
        poller = (
            asyncio.create_task(_poll_tenants(app, tenant_settings.tenants_reload_seconds))
            if app.state.tenants_polled
            else None
        )
        writer = build_writer(
            tenant_group_options(registry, WriterSettings().default_group_options()), metrics
        )
        idempotency = await asyncio.to_thread(idempotency_store, settings, metrics)
        journal = DeliveryJournal(
            # With the shared store, the journal only remembers what this replica wrote.
            settings.journal_path if idempotency is None else None,
            max_entries=settings.journal_max_entries,
            ttl_seconds=settings.journal_ttl_seconds,
        )
        recovery = await asyncio.to_thread(journal.open, writer.read_back)
        logger.info("journal: %s", recovery)
        pipeline = WritePipeline(
            writer.write,
            journal=journal,
            metrics=metrics,
            idempotency=idempotency,
            read_back=writer.read_back,
            **pipeline_options(settings),
        )
        pipeline.start()
        app.state.pipeline = pipeline
        # What exists now lives as long as the service: keep it out of every later garbage
        # collection, which otherwise walks it again and again while requests allocate
        # (1-2 us per event in the benchmark), and lets request garbage wait (gc_settle.py).
        freeze_startup_objects()
        try:
            yield
        finally:
            if poller is not None:
                poller.cancel()
            unfreeze()
            await pipeline.stop(settings.shutdown_timeout_seconds)
            if idempotency is not None:
                await asyncio.to_thread(idempotency.close)
            writer.close()
            journal.close()

    # /docs, /redoc, /openapi.json: public, the static description of the public API (README
    # documents the same); no tenant data. CLOUDLOG_INGEST_DOCS=false serves none of them (404).
    docs = settings.docs
    app = FastAPI(
        title="cloudlog ingest",
        version="0.1.0",
        lifespan=lifespan,
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    track_tenant_registry(metrics.registry, lambda: getattr(app.state, "tenants", None))
    app.state.cloudwatch_check = CloudWatchCheck(
        cloudwatch_probe or describe_log_groups_probe(settings.ready_timeout_seconds),
        timeout_seconds=settings.ready_timeout_seconds,
        cache_seconds=settings.ready_cache_seconds,
    )
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_middleware(
        BodySizeLimit,
        max_bytes=settings.max_body_bytes,
        timeout_seconds=settings.body_timeout_seconds,
        max_in_flight_bytes=settings.max_body_bytes_in_flight,
        authenticate=authenticate_scope,  # from the headers, before any body is read
        protected=LOG_ROUTES,
        retry_after_seconds=settings.retry_after_seconds,
    )
    app.add_middleware(CountRefusals, metrics=metrics, routes=LOG_ROUTES)  # outside BodySizeLimit
    app.include_router(health.router)
    app.include_router(routes.router)
    return app
