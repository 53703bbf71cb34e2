"""Durable idempotency for ingest: which events were written, surviving a crash or restart.

The worker retries a batch whose answer it did not get, so ingest must recognise events it has
already written, even after ``kill -9``. Each commit is journaled twice, with an fsync each time:

- ``begin``: the streams and the time range the commit will write to, before any PutLogEvents;
- ``done``: the fingerprints of the events it wrote, before the HTTP answer.

On start, fingerprints younger than ``ttl_seconds`` are loaded. A commit with a ``begin`` but no
``done`` (the process died while writing) is recovered by reading its streams back from
CloudWatch over its time range: every event id found there was written. The file is compacted
as it grows. The file is 0600 and its folder 0700 (the folder is made so when this user owns
it): it names every tenant's groups and streams.

In memory the journal is a :class:`FingerprintSet`: a fixed-capacity table allocated once, at
construction, so the process does not grow as the journal fills (40 bytes per entry, at most:
``max_entries=1_000_000`` is 40 MB, held from the start). An event's fingerprint is 128 bits of
blake2b over (group, stream, event_id): a false "already written" would lose a line, and with
128 bits the chance of any collision among 10^6 live keys is about 10^-27.

The window it covers: a batch comes back after the worker's retries (up to ``max_retries``
countdowns of at most ``retry_backoff_max``) or after SQS's visibility timeout when a worker
died; ``ttl_seconds`` (6 h by default) outlasts both. Whichever bound is reached first wins: at
25,000 events/s, 10^6 entries hold the last 40 s, so a busy service should raise
``journal_max_entries`` (memory is ``40 B x max_entries``, flat).

File format, one JSON object a line: ``{"t":"begin","c":N,"streams":[[group, stream, lo, hi]]}``
and ``{"t":"done","c":N,"at":T,"keys":HEX}`` (HEX: the 16-byte fingerprints, concatenated).
On load, a ``done`` record whose keys are not HEX is skipped like a torn line (and counted in a
warning): a commit it closed is recovered through its ``begin`` record, if still there.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final

from cloudlog_writer.models import LogEvent

logger = logging.getLogger(__name__)

# (group, stream, start ms, end ms inclusive) -> event ids found there
ReadBack = Callable[[str, str, int, int], set[str]]
Fingerprint = bytes  # FINGERPRINT_BYTES of blake2b over (group, stream, event_id)

FINGERPRINT_BYTES: Final = 16  # 128 bits: two 64-bit words
COMPACT_FACTOR: Final = 2  # rewrite once the file holds this many times what is live (+ slack)
COMPACT_SLACK: Final = 10_000
# Table slots per entry, at least: at a load factor of 1/4 or less, probes and the clusters that
# deletion shifts stay short (measured: 1/2 made adding to a full table 1.6 times as costly).
SLOTS_PER_ENTRY: Final = 4
# The journal names every tenant's groups and streams: readable by the service's user alone.
FILE_MODE: Final = 0o600
FOLDER_MODE: Final = 0o700
_WORD: Final = 1 << 64


def event_fingerprint(group: str, stream: str, event_id: str) -> Fingerprint:
    return hashlib.blake2b(
        f"{group}\x00{stream}\x00{event_id}".encode(), digest_size=FINGERPRINT_BYTES
    ).digest()


def _words(fingerprints: Sequence[Fingerprint]) -> array[int]:
    """Two 64-bit words per fingerprint (native byte order, the table's own)."""
    words = array("Q")
    words.frombytes(b"".join(fingerprints))
    return words


class FingerprintSet:
    """A set of at most ``capacity`` 128-bit fingerprints, oldest out first, in fixed memory.

    Open addressing with linear probing over ``slots`` (each holds a ring position + 1, 0 for
    empty), at a load factor of at most 1/4; the fingerprints and their insertion times live in
    a ring in insertion order, so eviction by count and by age both take the ring's head.
    Deletion shifts the following cluster back (no tombstones). Adding a fingerprint already
    present changes nothing (its age is not refreshed). Not thread-safe: the journal locks.
    """

    def __init__(self, capacity: int, ttl_seconds: float) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        slots = 1 << max(4, (SLOTS_PER_ENTRY * capacity - 1).bit_length())
        self._mask = slots - 1
        self._capacity = capacity
        self._ttl = ttl_seconds
        self._slots = array("I", bytes(4 * slots))
        self._words = array("Q", bytes(16 * capacity))  # entry r: words 2r (home) and 2r + 1
        self._at = array("d", bytes(8 * capacity))
        self._head = 0  # oldest entry's ring position
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def contains(self, words: array[int]) -> list[bool]:
        """For each fingerprint (two words each), whether it is in the set."""
        slots, stored, mask = self._slots, self._words, self._mask
        out: list[bool] = []
        for i in range(0, len(words), 2):
            first, second = words[i], words[i + 1]
            slot = first & mask
            while True:
                entry = slots[slot]
                if not entry:
                    out.append(False)
                    break
                entry = 2 * entry - 2
                if stored[entry] == first and stored[entry + 1] == second:
                    out.append(True)
                    break
                slot = (slot + 1) & mask
        return out

    def add(self, words: array[int], at: float) -> int:
        """Add each fingerprint not present yet, stamped ``at``; returns how many were added.

        When full, each addition first evicts the oldest entry. (The eviction is written out
        here rather than called: this loop runs once per event written.)
        """
        slots, stored, stamps = self._slots, self._words, self._at
        mask, capacity = self._mask, self._capacity
        head, count = self._head, self._count
        added = 0
        for i in range(0, len(words), 2):
            first, second = words[i], words[i + 1]
            slot = first & mask
            entry = slots[slot]
            while entry:
                if stored[2 * entry - 2] == first and stored[2 * entry - 1] == second:
                    break
                slot = (slot + 1) & mask
                entry = slots[slot]
            if entry:
                continue  # present already
            if count == capacity:
                hole = self._slot_of(head)
                self._delete_slot(hole)
                head = head + 1 if head + 1 < capacity else 0
                count -= 1
                slot = first & mask  # the shift may have moved the cluster: probe again
                while slots[slot]:
                    slot = (slot + 1) & mask
            position = head + count
            if position >= capacity:
                position -= capacity
            stored[2 * position] = first
            stored[2 * position + 1] = second
            stamps[position] = at
            slots[slot] = position + 1
            count += 1
            added += 1
        self._head, self._count = head, count
        return added

    def expire(self, now: float) -> None:
        """Forget fingerprints added before ``now - ttl_seconds`` (oldest first)."""
        horizon = now - self._ttl
        while self._count and self._at[self._head] < horizon:
            self._evict_oldest()

    def _evict_oldest(self) -> None:
        head = self._head
        self._delete_slot(self._slot_of(head))
        self._head = head + 1 if head + 1 < self._capacity else 0
        self._count -= 1

    def _slot_of(self, position: int) -> int:
        """The slot holding ring ``position`` (which must be occupied)."""
        slots, mask = self._slots, self._mask
        slot = self._words[2 * position] & mask
        while slots[slot] != position + 1:
            slot = (slot + 1) & mask
        return slot

    def _delete_slot(self, hole: int) -> None:
        """Empty ``hole`` and shift back the entries after it that may move (Knuth's R)."""
        slots, stored, mask = self._slots, self._words, self._mask
        probe = hole
        while True:
            probe = (probe + 1) & mask
            entry = slots[probe]
            if not entry:
                break
            home = stored[2 * entry - 2] & mask
            # The entry stays if its home lies cyclically in (hole, probe].
            if hole < home <= probe if hole <= probe else home > hole or home <= probe:
                continue
            slots[hole] = entry
            hole = probe
        slots[hole] = 0

    def runs(self) -> Iterator[tuple[float, bytes]]:
        """(time, fingerprints concatenated) for runs of entries added in the same second,
        oldest first: what compaction writes."""
        count, head, capacity = self._count, self._head, self._capacity
        at = self._at
        start = 0
        while start < count:
            second = int(at[(head + start) % capacity])
            end = start + 1
            while end < count and int(at[(head + end) % capacity]) == second:
                end += 1
            yield at[(head + start) % capacity], self._slice(head + start, head + end)
            start = end

    def _slice(self, start: int, stop: int) -> bytes:
        capacity = self._capacity
        first, last = start % capacity, stop % capacity or capacity
        if first < last:
            return self._words[2 * first : 2 * last].tobytes()
        return self._words[2 * first :].tobytes() + self._words[: 2 * last].tobytes()


def _private_folder(folder: Path) -> None:
    """Create ``folder`` (0700), or take group and other access away from it when this user
    owns it: the journal says which streams were written and when. The current directory is
    left as it is (a journal path without a folder)."""
    folder.mkdir(mode=FOLDER_MODE, parents=True, exist_ok=True)
    if folder.resolve() == Path.cwd().resolve():
        return
    info = folder.stat()
    if info.st_uid == os.getuid() and info.st_mode & 0o077:
        folder.chmod(FOLDER_MODE)


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
        """``path=None`` keeps fingerprints in memory only (no protection across restarts).

        All the memory for ``max_entries`` fingerprints is allocated here.
        """
        self._compact_slack = compact_slack
        self._path = path
        self._ttl = ttl_seconds
        self._clock = clock
        self._set = FingerprintSet(max_entries, ttl_seconds)
        self._lock = threading.Lock()
        self._file: IO[str] | None = None
        self._records = 0  # lines in the file
        self._file_keys = 0  # fingerprints in the file, live or not
        self._next_commit = 1
        self._pending: dict[int, list[list[Any]]] = {}  # begun, not yet done: kept by compaction

    def __len__(self) -> int:
        return len(self._set)

    def open(self, read_back: ReadBack) -> Recovery:
        """Load what the journal remembers, recover unfinished commits, and start appending."""
        unfinished: dict[int, list[list[Any]]] = {}
        loaded = 0
        skipped = 0
        if self._path is not None and self._path.exists():
            for record in self._read_records(self._path):
                kind = record.get("t")
                if kind == "begin":
                    unfinished[record["c"]] = record["streams"]
                    self._next_commit = max(self._next_commit, record["c"] + 1)
                elif kind == "done":
                    fingerprints = record.get("keys")
                    if not isinstance(fingerprints, str):
                        # Not this format's keys: skipped like a torn line, so the commit it
                        # closed, if its begin record is still here, is recovered below.
                        skipped += 1
                        continue
                    unfinished.pop(record.get("c", -1), None)
                    loaded += self._load_done(record, fingerprints)
        if skipped:
            logger.warning(
                "journal: skipped %d done record(s) whose keys are not hex fingerprints",
                skipped,
            )
        recovered = 0
        for streams in unfinished.values():
            for group, stream, start, end in streams:
                found = read_back(group, stream, start, end)
                keys = [event_fingerprint(group, stream, event_id) for event_id in found]
                recovered += self._remember(keys, self._clock())
        if unfinished:
            logger.warning(
                "journal: recovered %d unfinished commit(s): %d events found already written",
                len(unfinished),
                recovered,
            )
        if self._path is not None:
            _private_folder(self._path.parent)
            with self._lock:
                self._rewrite_locked()
        return Recovery(loaded, len(unfinished), recovered)

    def _load_done(self, record: dict[str, Any], fingerprints: str) -> int:
        at = float(record["at"])
        if at < self._clock() - self._ttl:
            return 0
        data = bytes.fromhex(fingerprints)
        usable = len(data) - len(data) % FINGERPRINT_BYTES
        keys = [data[i : i + FINGERPRINT_BYTES] for i in range(0, usable, FINGERPRINT_BYTES)]
        return self._remember(keys, at)

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

    def _remember(self, keys: Sequence[Fingerprint], at: float) -> int:
        with self._lock:
            self._set.expire(self._clock())
            return self._set.add(_words(keys), at)

    # -- the commit path ------------------------------------------------------------------

    def remember(self, keys: Sequence[Fingerprint]) -> int:
        """Take ``keys`` as written (found in CloudWatch by a read-back), in memory only: they
        are recognised as duplicates from now on. Returns how many were new."""
        return self._remember(keys, self._clock())

    def fingerprints(self, events: Sequence[LogEvent]) -> list[Fingerprint]:
        """One fingerprint per event: compute them once per commit, pass them around."""
        blake2b = hashlib.blake2b
        return [
            blake2b(
                f"{e.log_group}\x00{e.log_stream}\x00{e.event_id}".encode(),
                digest_size=FINGERPRINT_BYTES,
            ).digest()
            for e in events
        ]

    def known(self, keys: Sequence[Fingerprint]) -> list[bool]:
        """Whether each event, by its fingerprint, was written."""
        now = self._clock()
        with self._lock:
            self._set.expire(now)
            return self._set.contains(_words(keys))

    def begin(self, events: Sequence[LogEvent]) -> int:
        """Journal the streams and time ranges a commit is about to write; returns its id."""
        ranges: dict[tuple[str, str], list[int]] = {}
        for event in events:
            key = (event.log_group, event.log_stream)
            bounds = ranges.get(key)
            if bounds is None:
                ranges[key] = [event.timestamp, event.timestamp]
            elif event.timestamp < bounds[0]:
                bounds[0] = event.timestamp
            elif event.timestamp > bounds[1]:
                bounds[1] = event.timestamp
        streams = [[group, stream, lo, hi] for (group, stream), (lo, hi) in ranges.items()]
        with self._lock:
            commit = self._next_commit
            self._next_commit += 1
            self._pending[commit] = streams
        self._append({"t": "begin", "c": commit, "streams": streams}, 0)
        return commit

    def finish(self, commit: int, written: Sequence[Fingerprint]) -> None:
        """Journal the fingerprints of the events a commit wrote; from now on they are
        recognised as duplicates."""
        now = self._clock()
        # Memory first: a compaction triggered by this append rewrites the file from memory.
        self._remember(written, now)
        with self._lock:
            self._pending.pop(commit, None)
        record = {"t": "done", "c": commit, "at": now, "keys": b"".join(written).hex()}
        self._append(record, len(written))

    def _append(self, record: dict[str, Any], keys: int) -> None:
        if self._file is None:
            return
        line = json.dumps(record, separators=(",", ":")) + "\n"
        with self._lock:
            self._file.write(line)
            self._file.flush()
            os.fsync(self._file.fileno())
            self._records += 1
            self._file_keys += keys
            live = len(self._set) + len(self._pending)
            if self._records + self._file_keys > COMPACT_FACTOR * live + self._compact_slack:
                self._rewrite_locked()

    def _rewrite_locked(self) -> None:
        """Replace the file with one ``done`` record per second of live fingerprints, plus the
        ``begin`` records of commits still in flight (atomic rename)."""
        assert self._path is not None
        records = 0
        temporary = self._path.with_suffix(self._path.suffix + ".tmp")
        temporary.unlink(missing_ok=True)  # a leftover may have a wider mode
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        os.fchmod(descriptor, FILE_MODE)  # whatever the umask
        with open(descriptor, "w", encoding="utf-8") as out:
            for at, data in self._set.runs():
                out.write(json.dumps({"t": "done", "at": at, "keys": data.hex()}) + "\n")
                records += 1
            for commit, streams in self._pending.items():
                out.write(json.dumps({"t": "begin", "c": commit, "streams": streams}) + "\n")
                records += 1
            out.flush()
            os.fsync(out.fileno())
        if self._file is not None:
            self._file.close()
        os.replace(temporary, self._path)
        self._file = self._path.open("a", encoding="utf-8")
        self._records = records
        self._file_keys = len(self._set)

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None
