"""Test doubles shared by the writer tests: a strict in-memory CloudWatch Logs and helpers."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from botocore.exceptions import ClientError

from cloudlog_writer.limits import (
    EVENT_OVERHEAD_BYTES,
    MAX_BATCH_BYTES,
    MAX_BATCH_EVENTS,
    MAX_BATCH_SPAN_MS,
    event_size,
)


def client_error(
    code: str, status: int = 400, op: str = "PutLogEvents", **extra: Any
) -> ClientError:
    response: dict[str, Any] = {
        "Error": {"Code": code, "Message": f"{code} raised by test"},
        "ResponseMetadata": {"HTTPStatusCode": status},
        **extra,
    }
    return ClientError(response, op)  # type: ignore[arg-type]


def check_put_request(kwargs: dict[str, Any], max_event_bytes: int = MAX_BATCH_BYTES) -> None:
    """Every documented PutLogEvents limit, enforced the way AWS does: the whole call fails."""
    events = kwargs["logEvents"]
    problems = []
    if not 1 <= len(events) <= MAX_BATCH_EVENTS:
        problems.append(f"{len(events)} events")
    total = sum(event_size(e["message"]) for e in events)
    if total > MAX_BATCH_BYTES:
        problems.append(f"{total} bytes")
    stamps = [e["timestamp"] for e in events]
    if stamps != sorted(stamps):
        problems.append("not chronological")
    if stamps and stamps[-1] - stamps[0] > MAX_BATCH_SPAN_MS:
        problems.append("span over 24h")
    for e in events:
        if not e["message"]:
            problems.append("empty message")
        if len(e["message"].encode("utf-8")) + EVENT_OVERHEAD_BYTES > max_event_bytes:
            problems.append("event too large")
    if problems:
        raise client_error("InvalidParameterException", Message=", ".join(problems))


class FakeLogs:
    """An in-memory, strict, thread-safe CloudWatch Logs with scripted failures.

    ``script`` maps an operation name to a list of exceptions (or callables returning a response
    override) consumed one per call before the real behaviour runs.
    """

    def __init__(self, *, put_delay: float = 0.0, max_event_bytes: int = MAX_BATCH_BYTES) -> None:
        self.lock = threading.Lock()
        self.streams: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self.groups: dict[str, dict[str, Any]] = {}
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.script: dict[str, list[BaseException]] = defaultdict(list)
        self.put_delay = put_delay
        self.max_event_bytes = max_event_bytes
        self.in_flight: dict[tuple[str, str], int] = defaultdict(int)
        self.max_in_flight: dict[tuple[str, str], int] = defaultdict(int)
        self.total_in_flight = 0
        self.max_total_in_flight = 0
        self.rejected_info: Callable[[list[dict[str, Any]]], dict[str, int]] | None = None

    def _enter(self, op: str, kwargs: dict[str, Any]) -> None:
        with self.lock:
            self.calls.append((op, kwargs))
            if self.script[op]:
                raise self.script[op].pop(0)

    def ops(self) -> list[str]:
        return [op for op, _ in self.calls]

    def create_log_group(self, **kwargs: Any) -> dict[str, Any]:
        self._enter("create_log_group", kwargs)
        with self.lock:
            name = kwargs["logGroupName"]
            if name in self.groups:
                raise client_error("ResourceAlreadyExistsException", op="CreateLogGroup")
            self.groups[name] = dict(kwargs)
        return {}

    def put_retention_policy(self, **kwargs: Any) -> dict[str, Any]:
        self._enter("put_retention_policy", kwargs)
        with self.lock:
            self.groups[kwargs["logGroupName"]]["retentionInDays"] = kwargs["retentionInDays"]
        return {}

    def create_log_stream(self, **kwargs: Any) -> dict[str, Any]:
        self._enter("create_log_stream", kwargs)
        key = (kwargs["logGroupName"], kwargs["logStreamName"])
        with self.lock:
            if key[0] not in self.groups:
                raise client_error("ResourceNotFoundException", op="CreateLogStream")
            if key in self.streams:
                raise client_error("ResourceAlreadyExistsException", op="CreateLogStream")
            self.streams[key] = []
        return {}

    def delete_log_group(self, name: str) -> None:
        with self.lock:
            self.groups.pop(name, None)
            for key in [k for k in self.streams if k[0] == name]:
                del self.streams[key]

    def put_log_events(self, **kwargs: Any) -> dict[str, Any]:
        self._enter("put_log_events", kwargs)
        key = (kwargs["logGroupName"], kwargs["logStreamName"])
        check_put_request(kwargs, self.max_event_bytes)
        with self.lock:
            self.in_flight[key] += 1
            self.total_in_flight += 1
            self.max_in_flight[key] = max(self.max_in_flight[key], self.in_flight[key])
            self.max_total_in_flight = max(self.max_total_in_flight, self.total_in_flight)
        try:
            if self.put_delay:
                time.sleep(self.put_delay)
            with self.lock:
                if key not in self.streams:
                    raise client_error("ResourceNotFoundException")
                info = self.rejected_info(kwargs["logEvents"]) if self.rejected_info else {}
                self.streams[key].extend(kwargs["logEvents"])
            response: dict[str, Any] = {"nextSequenceToken": "next"}
            if info:
                response["rejectedLogEventsInfo"] = info
            return response
        finally:
            with self.lock:
                self.in_flight[key] -= 1
                self.total_in_flight -= 1

    def describe_log_streams(self, **kwargs: Any) -> dict[str, Any]:
        raise AssertionError("DescribeLogStreams must stay off the hot path")

    def messages(self, group: str, stream: str) -> list[str]:
        return [e["message"] for e in self.streams.get((group, stream), [])]


class StrictClient:
    """Wraps a real client (moto) and refuses PutLogEvents requests that break AWS limits,
    which moto itself does not check."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.puts = 0

    def put_log_events(self, **kwargs: Any) -> Any:
        check_put_request(kwargs)
        self.puts += 1
        return self._inner.put_log_events(**kwargs)

    def describe_log_streams(self, **kwargs: Any) -> Any:
        raise AssertionError("DescribeLogStreams must stay off the hot path")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)
