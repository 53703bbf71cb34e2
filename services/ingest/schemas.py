"""Request and response bodies of the ingest API."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from cloudlog.names import check_log_group, check_log_stream
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
LogGroupName = Annotated[str, AfterValidator(check_log_group)]
LogStreamName = Annotated[str, AfterValidator(check_log_stream)]
Message = Annotated[str, Field(min_length=1, description="The log line; may not be empty.")]
# event ids: what the Flask client makes (uuid hex) and what a caller might reasonably choose.
EventId = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:\-]+$")]
MAX_FIELDS_KEYS = 100


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
    fields: dict[str, Any] | None = Field(default=None, max_length=MAX_FIELDS_KEYS)


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
