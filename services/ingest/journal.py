"""Durable idempotency for ingest: which events were written, surviving a crash or restart.

The worker retries a batch whose answer it did not get, so ingest must recognise events it has
already written, even after ``kill -9``. Each commit is journaled twice, with an fsync each time:

- ``begin``: the streams and the time range the commit will write to, before any PutLogEvents;
- ``done``: hashed keys of the events it wrote, before the HTTP answer.

On start, keys younger than ``ttl_seconds`` are loaded. A commit with a ``begin`` but no ``done``
(the process died while writing) is recovered by reading its streams back from CloudWatch over
its time range: every event id found there was written. The journal is compacted as it grows, and
holds at most ``max_entries`` keys in memory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from services.writer.models import LogEvent

logger = logging.getLogger(__name__)

# (group, stream, start ms, end ms inclusive) -> event ids found there
ReadBack = Callable[[str, str, int, int], set[str]]
KEY_BYTES = 12  # blake2b digest size: 96 bits, no practical collisions at millions of keys
COMPACT_FACTOR = 2  # rewrite once the file holds this many times the live keys (and 10k more)
COMPACT_SLACK = 10_000


def event_key(group: str, stream: str, event_id: str) -> str:
    digest = hashlib.blake2b(digest_size=KEY_BYTES)
    digest.update(f"{group}\x00{stream}\x00{event_id}".encode())
    return digest.hexdigest()


def key_of(event: LogEvent) -> str:
    return event_key(event.log_group, event.log_stream, event.event_id)


@dataclass(frozen=True, slots=True)
class Recovery:
    loaded_keys: int
    unfinished_commits: int
    recovered_keys: int


class DeliveryJournal:
    def __init__(
        self,
        path: Path | None,
        *,
        max_entries: int,
        ttl_seconds: float,
        clock: Callable[[], float] = time.time,
        compact_slack: int = COMPACT_SLACK,
    ) -> None:
        """``path=None`` keeps keys in memory only (no protection across restarts)."""
        self._compact_slack = compact_slack
        self._path = path
        self._max_entries = max_entries
        self._ttl = ttl_seconds
        self._clock = clock
        self._keys: OrderedDict[str, float] = OrderedDict()  # key -> written at (oldest first)
        self._lock = threading.Lock()
        self._file: IO[str] | None = None
        self._records = 0
        self._next_commit = 1
        self._pending: dict[int, list[list[Any]]] = {}  # begun, not yet done: kept by compaction

    def __len__(self) -> int:
        return len(self._keys)

    def open(self, read_back: ReadBack) -> Recovery:
        """Load what the journal remembers, recover unfinished commits, and start appending."""
        unfinished: dict[int, list[list[Any]]] = {}
        loaded = 0
        if self._path is not None and self._path.exists():
            for record in self._read_records(self._path):
                kind = record.get("t")
                if kind == "begin":
                    unfinished[record["c"]] = record["streams"]
                    self._next_commit = max(self._next_commit, record["c"] + 1)
                elif kind == "done":
                    unfinished.pop(record.get("c", -1), None)
                    loaded += self._remember(record["keys"], record["at"])
        recovered = 0
        for streams in unfinished.values():
            for group, stream, start, end in streams:
                found = read_back(group, stream, start, end)
                recovered += self._remember(
                    [event_key(group, stream, event_id) for event_id in found], self._clock()
                )
        if unfinished:
            logger.warning(
                "journal: recovered %d unfinished commit(s): %d events found already written",
                len(unfinished),
                recovered,
            )
        if self._path is not None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            self._rewrite()
        return Recovery(loaded, len(unfinished), recovered)

    @staticmethod
    def _read_records(path: Path) -> Iterable[dict[str, Any]]:
        with path.open(encoding="utf-8") as journal:
            for line in journal:
                try:
                    yield json.loads(line)
                except ValueError:
                    # A torn last line from a crash mid-append: what it described is recovered
                    # through its begin record, if any.
                    continue

    def _remember(self, keys: Iterable[str], at: float) -> int:
        horizon = self._clock() - self._ttl
        if at < horizon:
            return 0
        count = 0
        with self._lock:
            for key in keys:
                self._keys[key] = at
                self._keys.move_to_end(key)
                count += 1
            self._evict(horizon)
        return count

    def _evict(self, horizon: float) -> None:
        while self._keys:
            oldest_key, oldest_at = next(iter(self._keys.items()))
            if oldest_at >= horizon and len(self._keys) <= self._max_entries:
                return
            del self._keys[oldest_key]

    def written(self, event: LogEvent) -> bool:
        return key_of(event) in self._keys

    def begin(self, events: Sequence[LogEvent]) -> int:
        """Journal the streams and time ranges a commit is about to write; returns its id."""
        ranges: dict[tuple[str, str], list[int]] = {}
        for event in events:
            bounds = ranges.setdefault((event.log_group, event.log_stream), [event.timestamp] * 2)
            bounds[0] = min(bounds[0], event.timestamp)
            bounds[1] = max(bounds[1], event.timestamp)
        with self._lock:
            commit = self._next_commit
            self._next_commit += 1
        streams = [[group, stream, lo, hi] for (group, stream), (lo, hi) in ranges.items()]
        with self._lock:
            self._pending[commit] = streams
        self._append({"t": "begin", "c": commit, "streams": streams})
        return commit

    def finish(self, commit: int, written: Sequence[LogEvent]) -> None:
        """Journal the events a commit wrote; from now on they are recognised as duplicates."""
        keys = [key_of(event) for event in written]
        now = self._clock()
        # Memory first: a compaction triggered by this append rewrites the file from memory.
        self._remember(keys, now)
        with self._lock:
            self._pending.pop(commit, None)
        self._append({"t": "done", "c": commit, "at": now, "keys": keys})

    def _append(self, record: dict[str, Any]) -> None:
        if self._file is None:
            return
        line = json.dumps(record, separators=(",", ":")) + "\n"
        with self._lock:
            self._file.write(line)
            self._file.flush()
            os.fsync(self._file.fileno())
            self._records += 1
            if self._records > COMPACT_FACTOR * len(self._keys) + self._compact_slack:
                self._rewrite_locked()

    def _rewrite(self) -> None:
        with self._lock:
            self._rewrite_locked()

    def _rewrite_locked(self) -> None:
        """Replace the file with one ``done`` record per second of live keys, plus the ``begin``
        records of commits still in flight (atomic rename)."""
        assert self._path is not None
        by_second: dict[int, list[str]] = {}
        for key, at in self._keys.items():
            by_second.setdefault(int(at), []).append(key)
        temporary = self._path.with_suffix(self._path.suffix + ".tmp")
        with temporary.open("w", encoding="utf-8") as out:
            for second, keys in by_second.items():
                out.write(json.dumps({"t": "done", "at": second, "keys": keys}) + "\n")
            for commit, streams in self._pending.items():
                out.write(json.dumps({"t": "begin", "c": commit, "streams": streams}) + "\n")
            out.flush()
            os.fsync(out.fileno())
        if self._file is not None:
            self._file.close()
        os.replace(temporary, self._path)
        self._file = self._path.open("a", encoding="utf-8")
        self._records = len(by_second) + len(self._pending)

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None
