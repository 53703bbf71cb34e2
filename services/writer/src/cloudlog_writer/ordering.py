"""Chronological order for one stream's events."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

T = TypeVar("T")


def chronological(items: Iterable[T], timestamp: Callable[[T], int]) -> list[T]:
    """Sorted by timestamp. ``sorted`` is stable, so equal timestamps keep their input order
    (architecture invariant 5), and the parts of a split event stay together and in order."""
    return sorted(items, key=timestamp)
