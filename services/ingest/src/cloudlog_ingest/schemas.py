"""Request and response bodies of the ingest API.

``BatchRequest`` is the documented body of ``POST /v1/logs`` and the reference for what it
accepts. The route does not build it per request: it validates the raw body with
``INCOMING_BATCH`` (the same constraints, in pydantic-core alone, into plain dicts) and falls
back to ``BatchRequest`` only to report errors exactly as the reference does (deps.py).
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated, Any, NotRequired

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    TypeAdapter,
)
from pydantic_core import CoreSchema, PydanticCustomError, core_schema
from typing_extensions import TypedDict  # pydantic refuses typing.TypedDict before 3.12

from cloudlog_ingest.settings import MAX_EVENTS_PER_REQUEST


class Level(StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"
    CRITICAL = "critical"


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


def _valid_unicode(value: str) -> str:
    """``value``, or pydantic's own ``string_unicode`` error for text with a lone surrogate
    (which ``json.loads`` accepts from ``"\\ud800"``, and which no UTF-8 store can hold).
    pydantic checks this by itself only for strings with a length constraint."""
    try:
        value.encode()
    except UnicodeEncodeError:
        raise PydanticCustomError(
            "string_unicode",
            "Input should be a valid string, unable to parse raw data as a unicode string",
        ) from None
    return value


LevelField = Annotated[Level, BeforeValidator(_lower)]
# Names are checked after authentication, against the tenant's namespace (confinement.py),
# whatever is wrong with them: a refused name rejects its event alone in POST /v1/logs
# (reason "forbidden_name") and is a 403 naming the field in POST /logs. Only text that is not
# Unicode at all (a lone surrogate) is a 422 here, like every other text field.
LogGroupName = Annotated[
    str,
    Field(
        description="Log group, relative to the tenant's prefix; a leading '/' means the same "
        "name ('/ecs/shop' is '<prefix>ecs/shop')."
    ),
    AfterValidator(_valid_unicode),
]
LogStreamName = Annotated[
    str, Field(description="Log stream: no ':' or '*'."), AfterValidator(_valid_unicode)
]
Message = Annotated[str, Field(min_length=1, description="The log line; may not be empty.")]
# event ids: what the Flask client makes (uuid hex) and what a caller might reasonably choose.
EventId = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:\-]+$")]
MAX_LOGGER_CHARS = 256
MAX_FIELDS_KEYS = 100
MAX_FIELDS_BYTES = 65_536  # structured fields of one event, as JSON
# Levels of objects and arrays in ``fields``, ``fields`` itself being the first. Deeper values
# are refused before anything recurses into them (json.dumps, the writer): 952 levels raised
# RecursionError (a 500). 32 is far more than structured logging uses.
MAX_FIELDS_DEPTH = 32
# Event timestamps, in ms since the epoch: 0 to 9999-12-31T23:59:59.999Z, the last instant
# datetime (and ISO 8601 with four-digit years) can name, and below 2**53, so exact as a JSON
# number in every parser. Beyond it no clock is right; 10**30 was stored as "too_new".
MAX_TIMESTAMP_MS = 253_402_300_799_999


def fields_too_deep(value: Any, limit: int = MAX_FIELDS_DEPTH) -> bool:
    """Whether objects and arrays nest more than ``limit`` levels in ``value`` (iterative: no
    recursion, whatever the depth)."""
    stack: list[tuple[Any, int]] = [(value, 1)] if isinstance(value, dict | list) else []
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def fields_size_error(value: dict[str, Any]) -> str | None:
    """Why ``fields`` is over ``MAX_FIELDS_DEPTH`` levels or ``MAX_FIELDS_BYTES`` of JSON
    (``json.dumps`` defaults), or None."""
    if fields_too_deep(value):
        return f"at most {MAX_FIELDS_DEPTH} levels of nested objects and arrays"
    try:
        size = len(json.dumps(value, ensure_ascii=False, default=str).encode())
    except ValueError as error:  # lone surrogates do not encode (UnicodeEncodeError)
        return str(error)
    if size > MAX_FIELDS_BYTES:
        return f"at most {MAX_FIELDS_BYTES} bytes of JSON (got {size})"
    return None


def _bounded_fields(value: dict[str, Any] | None) -> dict[str, Any] | None:
    if value is not None and (error := fields_size_error(value)) is not None:
        raise ValueError(error)
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
    timestamp: int = Field(
        ge=0, le=MAX_TIMESTAMP_MS, description="Milliseconds since the epoch, UTC."
    )
    log_group: LogGroupName
    log_stream: LogStreamName
    message: Message
    level: LevelField = Level.INFO
    logger: str | None = Field(default=None, max_length=MAX_LOGGER_CHARS)
    fields: Annotated[
        dict[str, Any] | None,
        Field(default=None, max_length=MAX_FIELDS_KEYS),
        AfterValidator(_bounded_fields),
    ] = None


class BatchRequest(BaseModel):
    model_config = ConfigDict(json_schema_extra={"description": "A batch of events to write."})

    events: list[EventIn] = Field(min_length=1, max_length=MAX_EVENTS_PER_REQUEST)


class _LowerCase:
    """``Annotated`` marker: lower-case a string in pydantic-core, then validate it as the type."""

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.chain_schema([core_schema.str_schema(to_lower=True), handler(source)])


class IncomingEvent(TypedDict):
    """An event of ``BatchRequest`` as the hot path validates it: every constraint of ``EventIn``
    checked by pydantic-core, no Python called per event, a dict rather than a model.

    Absent keys take ``EventIn``'s defaults. Not checked here: ``fields`` as at most
    ``MAX_FIELDS_BYTES`` of JSON and ``MAX_FIELDS_DEPTH`` levels, checked where it is encoded
    anyway (routes.py). Lone surrogates never get here: pydantic's JSON parser refuses them
    and the body takes the reference path (deps.py).
    """

    event_id: EventId
    timestamp: Annotated[int, Field(ge=0, le=MAX_TIMESTAMP_MS)]
    log_group: str
    log_stream: str
    message: Message
    level: NotRequired[Annotated[Level, _LowerCase]]
    logger: NotRequired[Annotated[str | None, Field(max_length=MAX_LOGGER_CHARS)]]
    fields: NotRequired[Annotated[dict[str, Any] | None, Field(max_length=MAX_FIELDS_KEYS)]]


class IncomingBatch(TypedDict):
    events: Annotated[list[IncomingEvent], Field(min_length=1, max_length=MAX_EVENTS_PER_REQUEST)]


INCOMING_BATCH: TypeAdapter[IncomingBatch] = TypeAdapter(IncomingBatch)


class EventResultOut(BaseModel):
    event_id: str
    status: str  # "written" or "rejected"
    reason: str | None = None
    detail: str | None = None


class BatchResponse(BaseModel):
    written: int
    rejected: int
    results: list[EventResultOut]
