"""Request and response bodies of the ingest API."""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from services.ingest.settings import MAX_EVENTS_PER_REQUEST


class Level(StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"
    CRITICAL = "critical"


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


LevelField = Annotated[Level, BeforeValidator(_lower)]
# Names are checked after authentication, against the tenant's namespace (confinement.py):
# a name that is refused is a 403 naming the field, whatever is wrong with it.
LogGroupName = Annotated[str, Field(description="Log group, relative to the tenant's prefix.")]
LogStreamName = Annotated[str, Field(description="Log stream: no ':' or '*'.")]
Message = Annotated[str, Field(min_length=1, description="The log line; may not be empty.")]
# event ids: what the Flask client makes (uuid hex) and what a caller might reasonably choose.
EventId = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:\-]+$")]
MAX_FIELDS_KEYS = 100
MAX_FIELDS_BYTES = 65_536  # structured fields of one event, as JSON


def _bounded_fields(value: dict[str, Any] | None) -> dict[str, Any] | None:
    if value is not None:
        size = len(json.dumps(value, ensure_ascii=False, default=str).encode())
        if size > MAX_FIELDS_BYTES:
            raise ValueError(f"at most {MAX_FIELDS_BYTES} bytes of JSON (got {size})")
    return value


class SeedLogRequest(BaseModel):
    """The original contract: one line, answered at once, written in the background."""

    log_group: LogGroupName
    log_stream: LogStreamName
    log_message: Message
    level: LevelField = Level.INFO


class QueuedResponse(BaseModel):
    status: str = "queued"


class EventIn(BaseModel):
    event_id: EventId
    timestamp: int = Field(ge=0, description="Milliseconds since the epoch, UTC.")
    log_group: LogGroupName
    log_stream: LogStreamName
    message: Message
    level: LevelField = Level.INFO
    logger: str | None = Field(default=None, max_length=256)
    fields: Annotated[
        dict[str, Any] | None,
        Field(default=None, max_length=MAX_FIELDS_KEYS),
        AfterValidator(_bounded_fields),
    ] = None


class BatchRequest(BaseModel):
    model_config = ConfigDict(json_schema_extra={"description": "A batch of events to write."})

    events: list[EventIn] = Field(min_length=1, max_length=MAX_EVENTS_PER_REQUEST)


class EventResultOut(BaseModel):
    event_id: str
    status: str  # "written" or "rejected"
    reason: str | None = None
    detail: str | None = None


class BatchResponse(BaseModel):
    written: int
    rejected: int
    results: list[EventResultOut]
