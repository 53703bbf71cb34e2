"""Split an oversized event into marked parts, and join such parts back together.

A message larger than the event limit is never truncated: it becomes parts that keep the event's
timestamp and ``event_id``, each message prefixed with ``[cloudlog part i/n <event_id>] ``. The
marker's bytes count toward the limit. Cuts fall on UTF-8 character boundaries only, so every
part is valid text and joining the parts gives back the exact message.

Readers call :func:`reassemble`. A message written without splitting that happens to begin with
a well-formed marker would be taken for a part; event ids make that practically impossible.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import replace
from typing import Final

from .limits import EVENT_OVERHEAD_BYTES
from .models import LogEvent

MARKER_FORMAT: Final = "[cloudlog part {index}/{count} {event_id}] "
MARKER_RE: Final = re.compile(r"\[cloudlog part ([1-9][0-9]*)/([1-9][0-9]*) ([^\s\]]+)\] ")
# A 4-byte character must always fit next to the marker.
_MAX_UTF8_CHAR_BYTES: Final = 4
_EVENT_ID_RE: Final = re.compile(r"[^\s\]]+")


class SplitError(ValueError):
    """The event cannot be split into valid parts (unusable event id, or limit too small)."""


def marker(index: int, count: int, event_id: str) -> str:
    return MARKER_FORMAT.format(index=index, count=count, event_id=event_id)


def _cut(data: bytes, capacity: int) -> list[bytes]:
    """Chunks of at most ``capacity`` bytes, never cutting inside a UTF-8 character."""
    chunks: list[bytes] = []
    start = 0
    while start < len(data):
        end = min(start + capacity, len(data))
        # Continuation bytes look like 0b10xxxxxx; step back to a character start.
        while end < len(data) and (data[end] & 0xC0) == 0x80:
            end -= 1
        chunks.append(data[start:end])
        start = end
    return chunks


def split_event(event: LogEvent, max_event_bytes: int) -> list[LogEvent]:
    """The event itself if it fits (``UTF-8 bytes + 26 <= max_event_bytes``), else its parts."""
    budget = max_event_bytes - EVENT_OVERHEAD_BYTES
    data = event.message.encode("utf-8")
    if len(data) <= budget:
        return [event]
    if not _EVENT_ID_RE.fullmatch(event.event_id):
        raise SplitError(f"event id {event.event_id!r} cannot go into a part marker")
    digits = 1
    while True:
        widest = 10**digits - 1
        capacity = budget - len(marker(widest, widest, event.event_id).encode("utf-8"))
        if capacity < _MAX_UTF8_CHAR_BYTES:
            raise SplitError(f"max_event_bytes={max_event_bytes} leaves no room beside the marker")
        chunks = _cut(data, capacity)
        if len(chunks) <= widest:
            break
        digits += 1
    count = len(chunks)
    return [
        replace(event, message=marker(i, count, event.event_id) + chunk.decode("utf-8"))
        for i, chunk in enumerate(chunks, start=1)
    ]


def parse_marker(message: str) -> tuple[int, int, str, str] | None:
    """``(index, count, event_id, body)`` if the message is a part, else None."""
    match = MARKER_RE.match(message)
    if match is None:
        return None
    index, count = int(match.group(1)), int(match.group(2))
    if index > count:
        return None
    return index, count, match.group(3), message[match.end() :]


def reassemble(messages: Iterable[str]) -> list[str]:
    """Messages with complete part sets joined into one message at the first part's place.

    Duplicate parts (a redelivered event) are ignored. Parts of an incomplete set are returned
    as they are, markers included, so nothing is hidden from the reader.
    """
    items = list(messages)
    parsed = [parse_marker(m) for m in items]
    parts: dict[tuple[str, int], dict[int, str]] = {}
    for p in parsed:
        if p is not None:
            index, count, event_id, body = p
            parts.setdefault((event_id, count), {}).setdefault(index, body)
    out: list[str] = []
    emitted: set[tuple[str, int]] = set()
    for message, p in zip(items, parsed, strict=True):
        if p is None:
            out.append(message)
            continue
        _, count, event_id, _ = p
        key = (event_id, count)
        bodies = parts[key]
        if len(bodies) != count:
            out.append(message)
        elif key not in emitted:
            emitted.add(key)
            out.append("".join(bodies[i] for i in range(1, count + 1)))
    return out
