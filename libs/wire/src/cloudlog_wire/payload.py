"""The task payload: how one batch of events travels as the argument of a delivery task.

The dispatcher serialises a batch once, as compact JSON of the events list (UTF-8), compresses
it with zlib and base64-encodes it: that ASCII string is the task's only positional argument,
and the task's keyword arguments say how it is encoded and how many events it holds::

    deliver_batch("eJzt...", encoding="zlib+base64", event_count=1000[, api_key=...])

The worker reverses the two steps and POSTs ``{"events":`` + the JSON + ``}`` to ingest without
parsing a single event. With ``CLOUDLOG_TASK_COMPRESSION=none`` the argument is the JSON text
itself (``encoding="json"``).

No Celery or HTTP here: the dispatcher, the worker and ``cloudlog dlq`` share it.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import pydantic_core

ZLIB_BASE64 = "zlib+base64"
PLAIN_JSON = "json"
# zlib level 1, not the default 6: on bench batches (78-character lines, 1,000-10,000 events)
# level 1 compressed at 0.45 us/event against 1.2 us/event for level 6, to a size only 7 %
# larger (ratio 27 against 29); on varied application text 1.0 against 4.2 us/event for 20 %
# more bytes (ratio 8 against 10). Either is far below any SQS limit; CPU is what is scarce.
ZLIB_LEVEL = 1
# The POST body around the events' JSON: b'{"events":' + json + b'}'.
POST_PREFIX = b'{"events":'
POST_SUFFIX = b"}"
POST_WRAPPER_BYTES = len(POST_PREFIX) + len(POST_SUFFIX)
# What one task may expand to at most: the worker's and ``cloudlog dlq``'s guard against a corrupt
# or hostile message (an 87 KB task of ``[{},{},...]`` once expanded to 22 million events and
# 1.76 GB). Bytes: the upper bound of CLOUDLOG_MAX_BATCH_BYTES (16 MiB, ingest's default body
# limit too); events: ingest's CLOUDLOG_INGEST_MAX_EVENTS_PER_REQUEST default (10,000).
# A task past either is refused (``PayloadTooLarge``) and dead-lettered, never parsed whole.
MAX_DECOMPRESSED_BYTES = 16 * 1024 * 1024
MAX_TASK_EVENTS = 10_000


class TaskCompression(StrEnum):
    ZLIB = "zlib"
    NONE = "none"


class PayloadError(ValueError):
    """A task argument that cannot be decoded (unknown encoding, corrupt data, too large)."""


class PayloadTooLarge(PayloadError):
    """A task that expands past ``MAX_DECOMPRESSED_BYTES`` or ``MAX_TASK_EVENTS``."""


def events_json(events: list[dict[str, Any]]) -> bytes:
    """The events list as compact UTF-8 JSON: the form ingest receives.

    Written by pydantic-core (``to_json``, already installed with pydantic): 0.65 us per bench
    event against 2.4 for the standard library's C encoder, and byte for byte the same text
    except for some floats (``1e-7`` for ``1e-07``, ``0.00001`` for ``1e-05``: the same values).
    Events are made by events.make_event, whose values json_safe copies into fresh dicts and
    lists of JSON types.

    A message with a lone surrogate (``"\\udcff"``, e.g. from undecodable bytes read with
    ``surrogateescape``) cannot be UTF-8: such a batch is written with ASCII escapes instead,
    valid JSON that ingest answers per event, so the neighbours of that event still go through.
    """
    try:
        return pydantic_core.to_json(events)
    except pydantic_core.PydanticSerializationError:
        return json.dumps(events, separators=(",", ":"), check_circular=False).encode("ascii")


@dataclass(frozen=True, slots=True)
class EncodedBatch:
    """A batch ready to publish: its events (kept to requeue or re-split) and its task argument."""

    events: list[dict[str, Any]]
    data: str
    encoding: str

    @property
    def count(self) -> int:
        return len(self.events)


def encode(raw_json: bytes, compression: TaskCompression) -> tuple[str, str]:
    """(task argument, encoding name) for the events' JSON."""
    if compression is TaskCompression.ZLIB:
        packed = base64.b64encode(zlib.compress(raw_json, ZLIB_LEVEL)).decode("ascii")
        return packed, ZLIB_BASE64
    return raw_json.decode(), PLAIN_JSON


def task_kwargs(encoding: str, count: int, api_key: str | None) -> dict[str, Any]:
    """The keyword arguments of a delivery task; the dispatcher sizes tasks with these."""
    kwargs: dict[str, Any] = {"encoding": encoding, "event_count": count}
    if api_key:
        kwargs["api_key"] = api_key
    return kwargs


def decode_events_json(data: str, encoding: str | None) -> bytes:
    """The events' JSON (a list) from a task argument of the encoded form, at most
    ``MAX_DECOMPRESSED_BYTES`` (``PayloadTooLarge`` past it: inflated no further)."""
    if encoding == ZLIB_BASE64:
        try:
            compressed = base64.b64decode(data, validate=True)
            inflater = zlib.decompressobj()
            raw = inflater.decompress(compressed, MAX_DECOMPRESSED_BYTES)
        except (binascii.Error, zlib.error, ValueError) as exc:
            raise PayloadError(f"corrupt {ZLIB_BASE64} batch: {exc}") from exc
        if inflater.unconsumed_tail:
            raise PayloadTooLarge(f"batch decompresses to more than {MAX_DECOMPRESSED_BYTES} bytes")
        if not inflater.eof:
            raise PayloadError(f"corrupt {ZLIB_BASE64} batch: truncated")
        return raw
    if encoding == PLAIN_JSON:
        try:
            raw = data.encode()
        except UnicodeEncodeError as exc:
            raise PayloadError(f"the batch is not valid UTF-8: {exc}") from exc
        if len(raw) > MAX_DECOMPRESSED_BYTES:
            raise PayloadTooLarge(f"batch of more than {MAX_DECOMPRESSED_BYTES} bytes")
        return raw
    raise PayloadError(f"unknown batch encoding {encoding!r}")


# A tenant key as ingest issues it (``cl_`` + token_urlsafe(32)), and the places a key shows in
# Celery's reprs and HTTP headers: what ``redact`` masks in anything the worker or the CLI prints.
_KEY_PATTERNS = (
    (re.compile(r"cl_[A-Za-z0-9_\-]{8,}"), "cl_***"),
    (re.compile(r"(api_key\\?['\"]\s*:\s*\\?['\"])[^'\"\\]+"), r"\1***"),
    (re.compile(r"(Bearer\s+)[^\s'\"\\]+"), r"\1***"),
)
MASKED = "***"


def redact(text: str, *secrets: str | None) -> str:
    """``text`` without the given secrets nor anything that looks like an API key."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, MASKED)
    for pattern, replacement in _KEY_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def task_kwargsrepr(kwargs: dict[str, Any]) -> str:
    """What Celery shows of a task's keyword arguments (``kwargsrepr``): the key masked."""
    shown = {**kwargs, "api_key": MASKED} if kwargs.get("api_key") else kwargs
    return repr(shown)


def task_argsrepr(batch: object, encoding: str | None, count: int | None) -> str:
    """What Celery shows of a task's positional arguments: never the payload."""
    size = len(batch) if isinstance(batch, str | list) else 0
    return f"[<{count if count is not None else '?'} events, {encoding}, {size} chars>]"


def post_body(raw_json: bytes) -> bytes:
    """The ``POST /v1/logs`` body around the events' JSON, without parsing it."""
    return b"".join((POST_PREFIX, raw_json, POST_SUFFIX))


def task_events(batch: object, encoding: str | None) -> list[dict[str, Any]]:
    """The events of a task's first argument (for ``cloudlog dlq``), bounded like the worker."""
    if not isinstance(batch, str):
        raise PayloadError(f"unexpected batch argument of type {type(batch).__name__}")
    return parse_events_json(decode_events_json(batch, encoding))


_WHITESPACE = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()


def _elements(raw_json: bytes) -> Iterator[Any]:
    """The elements of a JSON array, one at a time: the whole list is never built, so a caller
    that stops early allocates at most one element (``[{},{},...]`` cannot explode)."""
    try:
        text = raw_json.decode()
    except UnicodeDecodeError as exc:
        raise PayloadError(f"the batch is not valid JSON: {exc}") from exc
    end = len(text)

    def skip(text: str, at: int) -> re.Match[str]:
        found = _WHITESPACE.match(text, at)
        assert found is not None  # the pattern matches the empty string
        return found

    at = skip(text, 0).end()
    if text[at : at + 1] != "[":
        raise PayloadError("the batch's JSON is not a list of events")
    at = skip(text, at + 1).end()
    if text[at : at + 1] == "]":
        if skip(text, at + 1).end() != end:
            raise PayloadError("the batch is not valid JSON: extra data after the list")
        return
    while True:
        try:
            value, at = _DECODER.raw_decode(text, at)
        except ValueError as exc:
            raise PayloadError(f"the batch is not valid JSON: {exc}") from exc
        yield value
        at = skip(text, at).end()
        separator = text[at : at + 1]
        if separator == ",":
            at = skip(text, at + 1).end()
        elif separator == "]":
            if skip(text, at + 1).end() != end:
                raise PayloadError("the batch is not valid JSON: extra data after the list")
            return
        else:
            raise PayloadError(f"the batch is not valid JSON: expected , or ] at {at}")


def count_events(raw_json: bytes, limit: int = MAX_TASK_EVENTS) -> int:
    """How many events a batch's decoded JSON holds; ``PayloadTooLarge`` past ``limit``."""
    count = 0
    for _ in _elements(raw_json):
        count += 1
        if count > limit:
            raise PayloadTooLarge(f"batch of more than {limit} events")
    return count


def parse_events_json(raw_json: bytes, limit: int = MAX_TASK_EVENTS) -> list[dict[str, Any]]:
    """The events of a batch's decoded JSON; ``PayloadError`` if it is not a list,
    ``PayloadTooLarge`` past ``limit`` events (parsing stops there)."""
    events: list[dict[str, Any]] = []
    for event in _elements(raw_json):
        if len(events) >= limit:
            raise PayloadTooLarge(f"batch of more than {limit} events")
        events.append(event)
    return events
