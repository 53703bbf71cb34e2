"""``cloudlog tail``: read events back from CloudWatch Logs (not an echo of what was sent)."""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

# Event ids already printed, to skip the overlap between polls; bounded.
MAX_REMEMBERED_EVENT_IDS = 50_000
POLL_INTERVAL_S = 1.0


def _readable(message: str) -> str:
    """cloudlog's JSON events as ``LEVEL message key=value ...``; anything else as it is."""
    try:
        document = json.loads(message)
    except ValueError:
        return message
    if not isinstance(document, dict) or "level" not in document or "message" not in document:
        return message
    fields = document.get("fields") or {}
    extras = " ".join(
        f"{key}={json.dumps(value, ensure_ascii=False)}"
        for key, value in fields.items()
        if key != "exception"
    )
    text = f"{str(document['level']).upper():<8} {document['message']}"
    if extras:
        text += f"  {extras}"
    if "exception" in fields:
        text += "\n" + str(fields["exception"])
    return text


def format_event(event: dict[str, Any], *, raw: bool = False) -> str:
    stamp = datetime.fromtimestamp(event["timestamp"] / 1000, tz=UTC)
    when = stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"
    message = event["message"] if raw else _readable(event["message"])
    return f"{when} {event.get('logStreamName', '')} {message}"


def read_events(
    client: Any, group: str, *, stream: str | None = None, start_time: int | None = None
) -> Iterator[dict[str, Any]]:
    """All events of a group (or one stream) from ``start_time`` on, following pagination."""
    kwargs: dict[str, Any] = {"logGroupName": group}
    if stream:
        kwargs["logStreamNames"] = [stream]
    if start_time is not None:
        kwargs["startTime"] = start_time
    for page in client.get_paginator("filter_log_events").paginate(**kwargs):
        yield from page.get("events", [])


class Follower:
    """Polls a group and yields each event once, remembering a bounded window of ids."""

    def __init__(self, client: Any, group: str, *, stream: str | None = None) -> None:
        self._client = client
        self._group = group
        self._stream = stream
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._since: int | None = None

    def poll(self) -> list[dict[str, Any]]:
        fresh = []
        try:
            events = list(
                read_events(self._client, self._group, stream=self._stream, start_time=self._since)
            )
        except self._client.exceptions.ResourceNotFoundException:
            return []  # the group does not exist yet
        for event in sorted(events, key=lambda e: (e["timestamp"], e.get("ingestionTime", 0))):
            if event["eventId"] in self._seen:
                continue
            self._seen[event["eventId"]] = None
            if len(self._seen) > MAX_REMEMBERED_EVENT_IDS:
                self._seen.popitem(last=False)
            fresh.append(event)
        if fresh:
            # Re-read from the newest timestamp: events can still land within that millisecond.
            self._since = max(event["timestamp"] for event in fresh)
        return fresh


# How many group names are looked through for suggestions when a group does not exist.
MAX_GROUPS_SCANNED = 10_000
MAX_SUGGESTIONS = 5


class GroupNotFound(LookupError):
    """The group does not exist; ``similar`` are existing groups the user may have meant."""

    def __init__(self, group: str, similar: list[str]) -> None:
        self.group = group
        self.similar = similar
        text = f"log group {group!r} does not exist"
        if similar:
            text += "; did you mean " + " or ".join(similar) + "?"
        text += (
            " (tail takes the stored name: an app's CLOUDLOG_LOG_GROUP lands under its tenant's"
            " prefix, local/ for `cloudlog dev`)"
        )
        super().__init__(text)


def group_exists(client: Any, group: str) -> bool:
    page = client.describe_log_groups(logGroupNamePrefix=group, limit=50)
    return any(entry["logGroupName"] == group for entry in page.get("logGroups", []))


def similar_groups(client: Any, group: str) -> list[str]:
    """Existing groups ending with ``/group`` first, then those containing it (case aside)."""
    wanted = group.strip("/").lower()
    ending: list[str] = []
    containing: list[str] = []
    scanned = 0
    for page in client.get_paginator("describe_log_groups").paginate():
        for entry in page.get("logGroups", []):
            name = entry["logGroupName"]
            scanned += 1
            if name.lower().endswith("/" + wanted):
                ending.append(name)
            elif wanted and wanted in name.lower():
                containing.append(name)
        if scanned >= MAX_GROUPS_SCANNED:
            break
    return (sorted(ending) + sorted(containing))[:MAX_SUGGESTIONS]


def check_group(client: Any, group: str) -> None:
    """Raise :class:`GroupNotFound` (with similar names) unless the group exists."""
    if not group_exists(client, group):
        raise GroupNotFound(group, similar_groups(client, group))


def tail(
    client: Any,
    group: str,
    *,
    stream: str | None,
    follow: bool,
    raw: bool = False,
    emit: Callable[[str], None],
) -> int:
    """Print events; with ``follow``, keep polling until interrupted. Returns the count."""
    follower = Follower(client, group, stream=stream)
    printed = 0
    while True:
        for event in follower.poll():
            emit(format_event(event, raw=raw))
            printed += 1
        if not follow:
            return printed
        time.sleep(POLL_INTERVAL_S)
