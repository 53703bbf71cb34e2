"""Group events by destination (log group, log stream), keeping input order within each."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

from .models import LogEvent

T = TypeVar("T")
StreamKey = tuple[str, str]


def stream_key(event: LogEvent) -> StreamKey:
    return (event.log_group, event.log_stream)


def partition(items: Iterable[T], key: Callable[[T], StreamKey]) -> dict[StreamKey, list[T]]:
    """Items per destination; keys in first-seen order, items in input order."""
    groups: dict[StreamKey, list[T]] = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    return groups
