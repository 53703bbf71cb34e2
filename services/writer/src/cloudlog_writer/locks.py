"""One put in flight per stream, with a bounded number of locks.

A fixed array of locks indexed by the stream's hash ("lock striping"): memory stays bounded
however many streams appear, and two streams sharing a stripe merely take turns.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable
from typing import Final

DEFAULT_STRIPES: Final = 1024


class StripedLocks:
    def __init__(self, stripes: int = DEFAULT_STRIPES) -> None:
        if stripes < 1:
            raise ValueError("stripes must be at least 1")
        self._locks = [threading.Lock() for _ in range(stripes)]

    def lock_for(self, key: Hashable) -> threading.Lock:
        return self._locks[hash(key) % len(self._locks)]
