"""The FastAPI application. Clients (boto3, the writer) are created in ``lifespan``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from services.ingest import health, routes
from services.ingest.journal import DeliveryJournal, ReadBack
from services.ingest.pipeline import WriteFunction, WritePipeline
from services.ingest.readback import event_ids_in_stream
from services.ingest.settings import IngestSettings, get_settings
from services.writer import CloudWatchWriter, WriterSettings, make_logs_client

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WriterHandle:
    write: WriteFunction
    close: Callable[[], None]
    read_back: ReadBack  # event ids already stored in a stream's time range


# Builds the writer; tests may pass their own.
WriterFactory = Callable[[], WriterHandle]


def default_writer_factory() -> WriterHandle:
    writer_settings = WriterSettings()
    client = make_logs_client(writer_settings)
    writer = CloudWatchWriter(client, writer_settings)
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


def create_app(
    settings: IngestSettings | None = None, writer_factory: WriterFactory | None = None
) -> FastAPI:
    settings = settings or get_settings()
    build_writer = writer_factory or default_writer_factory

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        writer = build_writer()
        journal = DeliveryJournal(
            settings.journal_path,
            max_entries=settings.journal_max_entries,
            ttl_seconds=settings.journal_ttl_seconds,
        )
        recovery = await asyncio.to_thread(journal.open, writer.read_back)
        logger.info("journal: %s", recovery)
        pipeline = WritePipeline(
            writer.write,
            max_pending_events=settings.max_pending_events,
            max_commit_events=settings.max_commit_events,
            journal=journal,
        )
        pipeline.start()
        app.state.pipeline = pipeline
        try:
            yield
        finally:
            await pipeline.stop(settings.shutdown_timeout_seconds)
            writer.close()
            journal.close()

    app = FastAPI(title="cloudlog ingest", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.include_router(health.router)
    app.include_router(routes.router)
    return app
