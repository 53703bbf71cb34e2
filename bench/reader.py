"""Reading back from CloudWatch Logs: when did each numbered line become readable, how many are.

The readers talk to the emulator directly (not through the counting proxy), so their requests
are not counted against the system under test.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from bench.common import parse_line

PAGE_LIMIT = 10_000
# Lines stored behind the read position (an earlier timestamp written later) are looked for in a
# window this far before the first line seen twice.
REPAIR_WINDOW_MS = 10_000


class StreamReader:
    """Follows one stream with GetLogEvents and forward tokens; each poll returns the lines that
    became readable since the previous one, as (seq, emitted_at, readable_at).

    GetLogEvents orders by timestamp and its forward token is a position: lines written later
    with an earlier timestamp land behind the position and push already-read lines past it. A
    poll that reads a line a second time therefore re-reads a window before it, so such lines are
    found in the same poll they became readable in.
    """

    def __init__(self, logs: Any, group: str, stream: str) -> None:
        self.logs = logs
        self.group = group
        self.stream = stream
        self.seen: set[int] = set()
        self.repairs = 0
        self.polls = 0
        self._token: str | None = None

    def _page(self, **kwargs: Any) -> dict[str, Any] | None:
        try:
            page: dict[str, Any] = self.logs.get_log_events(
                logGroupName=self.group, logStreamName=self.stream, limit=PAGE_LIMIT, **kwargs
            )
        except self.logs.exceptions.ResourceNotFoundException:
            return None
        return page

    def poll(self) -> list[tuple[int, float, float]]:
        self.polls += 1
        found: list[tuple[int, float, float]] = []
        reread_ts: list[int] = []
        for _ in range(1_000):  # bounded: at most 10 M lines per poll
            kwargs: dict[str, Any] = {"startFromHead": True}
            if self._token is not None:
                kwargs["nextToken"] = self._token
            page = self._page(**kwargs)
            if page is None:
                return found
            now = time.time()
            for event in page["events"]:
                parsed = parse_line(event["message"])
                if parsed is None:
                    continue
                seq, emitted_at = parsed
                if seq in self.seen:
                    reread_ts.append(event["timestamp"])
                else:
                    self.seen.add(seq)
                    found.append((seq, emitted_at, now))
            token = page.get("nextForwardToken")
            if not page["events"] or token == self._token:
                self._token = token or self._token
                break
            self._token = token
        if reread_ts:
            found.extend(self._repair(min(reread_ts) - REPAIR_WINDOW_MS))
        return found

    def _repair(self, start_ms: int) -> list[tuple[int, float, float]]:
        self.repairs += 1
        found: list[tuple[int, float, float]] = []
        token: str | None = None
        for _ in range(1_000):
            kwargs: dict[str, Any] = {"startFromHead": True, "startTime": max(0, start_ms)}
            if token is not None:
                kwargs["nextToken"] = token
            page = self._page(**kwargs)
            if page is None:
                break
            now = time.time()
            for event in page["events"]:
                parsed = parse_line(event["message"])
                if parsed is not None and parsed[0] not in self.seen:
                    self.seen.add(parsed[0])
                    found.append((parsed[0], parsed[1], now))
            next_token = page.get("nextForwardToken")
            if not page["events"] or next_token == token:
                break
            token = next_token
        return found


def stored_bytes(logs: Any, group: str, stream: str) -> int:
    """The stream's storedBytes (moto: the sum of message lengths, updated on every put)."""
    try:
        streams = logs.describe_log_streams(logGroupName=group, logStreamNamePrefix=stream)
    except logs.exceptions.ResourceNotFoundException:
        return 0
    for item in streams.get("logStreams", []):
        if item["logStreamName"] == stream:
            return int(item.get("storedBytes", 0))
    return 0


def first_line_length(logs: Any, group: str, stream: str) -> int | None:
    """Length of one stored line (all lines of a run have the same length)."""
    try:
        page = logs.get_log_events(
            logGroupName=group, logStreamName=stream, limit=1, startFromHead=True
        )
    except logs.exceptions.ResourceNotFoundException:
        return None
    events = page.get("events", [])
    return len(events[0]["message"]) if events else None


def read_all(logs: Any, group: str, stream: str) -> tuple[Counter[int], set[int]]:
    """Every measured line in the stream: seq -> times stored, and the stored lengths seen."""
    counts: Counter[int] = Counter()
    lengths: set[int] = set()
    token: str | None = None
    for _ in range(10_000):
        kwargs: dict[str, Any] = {"startFromHead": True}
        if token is not None:
            kwargs["nextToken"] = token
        try:
            page = logs.get_log_events(
                logGroupName=group, logStreamName=stream, limit=PAGE_LIMIT, **kwargs
            )
        except logs.exceptions.ResourceNotFoundException:
            break
        for event in page["events"]:
            parsed = parse_line(event["message"])
            if parsed is not None:
                counts[parsed[0]] += 1
                lengths.add(len(event["message"]))
        next_token = page.get("nextForwardToken")
        if not page["events"] or next_token == token:
            break
        token = next_token
    return counts, lengths
