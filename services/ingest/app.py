"""The FastAPI application. Clients (boto3, the writer) are created in ``lifespan``."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from services.ingest import health, routes
from services.ingest.pipeline import WriteFunction, WritePipeline
from services.ingest.settings import IngestSettings, get_settings
from services.writer import CloudWatchWriter, WriterSettings, make_logs_client

logger = logging.getLogger(__name__)

# Builds the write function and returns it with its closer; tests may pass their own.
WriterFactory = Callable[[], tuple[WriteFunction, Callable[[], None]]]


def default_writer_factory() -> tuple[WriteFunction, Callable[[], None]]:
    writer_settings = WriterSettings()
    writer = CloudWatchWriter(make_logs_client(writer_settings), writer_settings)
    return writer.write, writer.close


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
        write, close_writer = build_writer()
        pipeline = WritePipeline(
            write,
            max_pending_events=settings.max_pending_events,
            max_commit_events=settings.max_commit_events,
        )
        pipeline.start()
        app.state.pipeline = pipeline
        try:
            yield
        finally:
            await pipeline.stop(settings.shutdown_timeout_seconds)
            close_writer()

    app = FastAPI(title="cloudlog ingest", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.include_router(health.router)
    app.include_router(routes.router)
    return app
