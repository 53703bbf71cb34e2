from __future__ import annotations

import json
import logging
import os
import stat
import tracemalloc
from array import array
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloudlog_ingest.journal import DeliveryJournal, FingerprintSet, event_fingerprint
from cloudlog_writer.models import LogEvent


def ev(n: int, stream: str = "s", ts: int = 1_000) -> LogEvent:
    return LogEvent(f"id{n}", "g", stream, ts + n, f"m{n}")


def keys(*events: LogEvent) -> list[bytes]:
    return [event_fingerprint(e.log_group, e.log_stream, e.event_id) for e in events]


def written(journal: DeliveryJournal, event: LogEvent) -> bool:
    return journal.known(keys(event))[0]


def hex_keys(*events: LogEvent) -> str:
    """A done record's "keys", as the journal writes them."""
    return b"".join(keys(*events)).hex()


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def nothing_read_back(group: str, stream: str, start: int, end: int) -> set[str]:
    raise AssertionError("no recovery expected")


def test_written_events_are_remembered_across_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "j"
    journal = DeliveryJournal(path, max_entries=1000, ttl_seconds=3600)
    journal.open(nothing_read_back)
    commit = journal.begin([ev(1), ev(2)])
    journal.finish(commit, keys(ev(1)))  # ev(2) was rejected, not written
    journal.close()

    reopened = DeliveryJournal(path, max_entries=1000, ttl_seconds=3600)
    recovery = reopened.open(nothing_read_back)
    assert written(reopened, ev(1)) and not written(reopened, ev(2))
    assert (recovery.loaded_keys, recovery.unfinished_commits) == (1, 0)


def test_a_commit_cut_short_is_recovered_by_reading_its_streams_back(tmp_path: Path) -> None:
    path = tmp_path / "j"
    journal = DeliveryJournal(path, max_entries=1000, ttl_seconds=3600)
    journal.open(nothing_read_back)
    journal.begin([ev(1, "a"), ev(5, "a"), ev(2, "b")])
    journal.close()  # the process dies between PutLogEvents and the done record

    asked: list[tuple[str, str, int, int]] = []

    def read_back(group: str, stream: str, start: int, end: int) -> set[str]:
        asked.append((group, stream, start, end))
        return {"id1"} if stream == "a" else set()

    reopened = DeliveryJournal(path, max_entries=1000, ttl_seconds=3600)
    recovery = reopened.open(read_back)
    assert sorted(asked) == [("g", "a", 1_001, 1_005), ("g", "b", 1_002, 1_002)]
    assert written(reopened, ev(1, "a"))
    assert not written(reopened, ev(5, "a")) and not written(reopened, ev(2, "b"))
    assert (recovery.unfinished_commits, recovery.recovered_keys) == (1, 1)

    # Recovery is settled: a third start has nothing left to recover.
    reopened.close()
    third = DeliveryJournal(path, max_entries=1000, ttl_seconds=3600)
    assert third.open(nothing_read_back).unfinished_commits == 0
    assert written(third, ev(1, "a"))


def test_keys_older_than_the_ttl_are_forgotten(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "j"
    journal = DeliveryJournal(path, max_entries=1000, ttl_seconds=60, clock=clock)
    journal.open(nothing_read_back)
    journal.finish(journal.begin([ev(1)]), keys(ev(1)))
    clock.now += 30
    journal.finish(journal.begin([ev(2)]), keys(ev(2)))
    journal.close()
    clock.now += 45  # ev(1) is 75 s old, ev(2) 45 s
    reopened = DeliveryJournal(path, max_entries=1000, ttl_seconds=60, clock=clock)
    reopened.open(nothing_read_back)
    assert not written(reopened, ev(1)) and written(reopened, ev(2))


def test_memory_is_bounded_by_max_entries_oldest_out_first(tmp_path: Path) -> None:
    journal = DeliveryJournal(None, max_entries=3, ttl_seconds=3600)
    journal.open(nothing_read_back)
    for n in range(5):
        journal.finish(journal.begin([ev(n)]), keys(ev(n)))
    assert len(journal) == 3
    assert [written(journal, ev(n)) for n in range(5)] == [False, False, True, True, True]


def test_a_torn_last_line_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "j"
    journal = DeliveryJournal(path, max_entries=1000, ttl_seconds=3600)
    journal.open(nothing_read_back)
    journal.finish(journal.begin([ev(1)]), keys(ev(1)))
    journal.close()
    with path.open("a") as out:
        out.write('{"t":"done","c":9,"keys":["ab')  # a crash mid-append
    reopened = DeliveryJournal(path, max_entries=1000, ttl_seconds=3600)
    reopened.open(nothing_read_back)
    assert written(reopened, ev(1))


def test_compaction_keeps_commits_still_in_flight(tmp_path: Path) -> None:
    path = tmp_path / "j"
    # Few live keys (max_entries=5), many records: compaction runs several times.
    journal = DeliveryJournal(path, max_entries=5, ttl_seconds=3600, compact_slack=2)
    journal.open(nothing_read_back)
    journal.begin([ev(100, "slow")])
    for n in range(20):
        journal.finish(journal.begin([ev(n)]), keys(ev(n)))
    assert len(path.read_text().splitlines()) < 20, "the file was compacted"
    journal.close()  # the process dies with the slow commit unfinished

    reopened = DeliveryJournal(path, max_entries=5, ttl_seconds=3600)
    recovery = reopened.open(lambda g, s, lo, hi: {"id100"} if s == "slow" else set())
    assert recovery.unfinished_commits == 1
    assert written(reopened, ev(100, "slow"))
    assert [n for n in range(20) if written(reopened, ev(n))] == [16, 17, 18, 19]


# -- the fixed-memory table ------------------------------------------------------------------

Key = tuple[int, int]


class ReferenceSet:
    """The eviction rules of FingerprintSet over an insertion-ordered dict."""

    def __init__(self, capacity: int, ttl: float) -> None:
        self.capacity, self.ttl = capacity, ttl
        self.entries: dict[Key, float] = {}

    def expire(self, now: float) -> None:
        while self.entries:
            oldest, at = next(iter(self.entries.items()))
            if at >= now - self.ttl:
                return
            del self.entries[oldest]

    def add(self, batch: list[Key], at: float) -> int:
        added = 0
        for key in batch:
            if key in self.entries:
                continue
            if len(self.entries) == self.capacity:
                del self.entries[next(iter(self.entries))]
            self.entries[key] = at
            added += 1
        return added


def words_of(batch: list[Key]) -> array[int]:
    return array("Q", [word for key in batch for word in key])


# First words from a small range: home slots collide, so clusters form, wrap around the table
# and are shifted back on deletion.
key_strategy = st.tuples(st.integers(0, 40), st.integers(0, 3))
operation = st.one_of(
    st.tuples(st.just("add"), st.lists(key_strategy, max_size=12), st.floats(0, 30)),
    st.tuples(st.just("expire"), st.just([]), st.floats(0, 30)),
)


@settings(max_examples=300, deadline=None)
@given(
    capacity=st.integers(1, 9),
    ttl=st.floats(1, 60),
    operations=st.lists(operation, max_size=40),
    probes=st.lists(key_strategy, max_size=20),
)
def test_fingerprint_set_behaves_like_the_reference_model(
    capacity: int,
    ttl: float,
    operations: list[tuple[str, list[Key], float]],
    probes: list[Key],
) -> None:
    table = FingerprintSet(capacity, ttl)
    model = ReferenceSet(capacity, ttl)
    now = 0.0
    for kind, batch, step in operations:
        now += step
        if kind == "add":
            assert table.add(words_of(batch), now) == model.add(batch, now)
        else:
            table.expire(now)
            model.expire(now)
        assert len(table) == len(model.entries)
        everything = list(model.entries) + probes + batch
        assert table.contains(words_of(everything)) == [k in model.entries for k in everything]
    stored = b"".join(data for _, data in table.runs())
    assert stored == words_of(list(model.entries)).tobytes(), "runs() are oldest first"


def test_fingerprint_set_memory_does_not_grow_as_it_fills() -> None:
    table = FingerprintSet(20_000, ttl_seconds=3600)
    events = [LogEvent(f"id{n}", "g", "s", n, "m") for n in range(50_000)]
    batches = [keys(*events[i : i + 2_500]) for i in range(0, len(events), 2_500)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for batch in batches:  # fills it, then evicts 30,000
            table.add(array("Q", b"".join(batch)), 1.0)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(table) == 20_000
    assert grown < 10_000, f"{grown} bytes allocated by 50,000 adds"


def test_eviction_by_count_and_by_age_together(tmp_path: Path) -> None:
    clock = Clock()
    journal = DeliveryJournal(tmp_path / "j", max_entries=4, ttl_seconds=100, clock=clock)
    journal.open(nothing_read_back)
    for n in range(6):  # 0 and 1 go by count
        clock.now += 10
        journal.finish(journal.begin([ev(n)]), keys(ev(n)))
    assert [written(journal, ev(n)) for n in range(6)] == [False, False, True, True, True, True]
    clock.now += 75  # ev(2) was written 105 s ago, ev(3) 95 s
    assert [written(journal, ev(n)) for n in range(6)] == [False] * 3 + [True] * 3
    assert len(journal) == 3
    journal.close()
    reopened = DeliveryJournal(tmp_path / "j", max_entries=4, ttl_seconds=100, clock=clock)
    assert reopened.open(nothing_read_back).loaded_keys == 3
    assert [written(reopened, ev(n)) for n in range(6)] == [False] * 3 + [True] * 3


def test_keys_are_looked_up_once_per_commit_and_duplicates_in_a_commit_count_once() -> None:
    journal = DeliveryJournal(None, max_entries=10, ttl_seconds=3600)
    journal.open(nothing_read_back)
    events = [ev(1), ev(2), ev(1)]
    fingerprints = journal.fingerprints(events)
    assert fingerprints == keys(*events) and len(set(fingerprints)) == 2
    assert journal.known(fingerprints) == [False, False, False]
    journal.finish(journal.begin(events), fingerprints)
    assert journal.known(fingerprints) == [True, True, True]
    assert len(journal) == 2


def test_a_journal_written_before_is_honoured_and_its_commit_ids_continue(tmp_path: Path) -> None:
    """A file's keys (a compacted done record without "c", a commit's begin and done) are
    honoured until they age out and kept through compaction; its unfinished commits are
    recovered."""
    clock = Clock()
    path = tmp_path / "j"
    lines = [
        {"t": "done", "at": clock.now - 10, "keys": hex_keys(ev(1))},  # compacted: no "c"
        {"t": "begin", "c": 7, "streams": [["g", "s", 1_003, 1_003]]},
        {"t": "begin", "c": 8, "streams": [["g", "slow", 1_004, 1_004]]},
        {"t": "done", "c": 7, "at": clock.now - 5, "keys": hex_keys(ev(2))},
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))

    journal = DeliveryJournal(path, max_entries=100, ttl_seconds=60, clock=clock)
    recovery = journal.open(lambda g, s, lo, hi: {"id4"} if s == "slow" else set())
    assert (recovery.loaded_keys, recovery.unfinished_commits, recovery.recovered_keys) == (2, 1, 1)
    assert written(journal, ev(1)) and written(journal, ev(2)) and written(journal, ev(4, "slow"))
    assert not written(journal, ev(3))
    journal.finish(journal.begin([ev(3)]), keys(ev(3)))
    assert journal.begin([ev(9)]) > 8, "commit ids continue past the old file's"
    journal.close()

    reopened = DeliveryJournal(path, max_entries=100, ttl_seconds=60, clock=clock)
    assert reopened.open(lambda g, s, lo, hi: set()).unfinished_commits == 1  # ev(9)'s
    assert all(written(reopened, ev(n)) for n in (1, 2, 3)) and written(reopened, ev(4, "slow"))
    clock.now += 52  # ev(1) and ev(2) are now 62 and 57 s old
    assert [written(reopened, ev(n)) for n in (1, 2, 3)] == [False, True, True]
    clock.now += 5  # 62 s, 57 s for ev(3)
    assert [written(reopened, ev(n)) for n in (1, 2, 3)] == [False, False, True]


def test_a_done_record_without_hex_keys_is_skipped_and_its_commit_recovered(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    path = tmp_path / "j"
    lines = [
        {"t": "begin", "c": 3, "streams": [["g", "s", 1_001, 1_002]]},
        {"t": "done", "c": 3, "at": clock.now - 5, "keys": ["0" * 24]},  # not hex fingerprints
        {"t": "done", "at": clock.now - 5, "keys": hex_keys(ev(5))},
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    journal = DeliveryJournal(path, max_entries=10, ttl_seconds=60, clock=clock)
    with caplog.at_level(logging.WARNING, logger="cloudlog_ingest.journal"):
        recovery = journal.open(lambda g, s, lo, hi: {"id1"})
    assert (recovery.loaded_keys, recovery.unfinished_commits, recovery.recovered_keys) == (1, 1, 1)
    assert written(journal, ev(1)) and written(journal, ev(5)) and not written(journal, ev(2))
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert skipped == ["journal: skipped 1 done record(s) whose keys are not hex fingerprints"]
    journal.close()
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert all(isinstance(r["keys"], str) for r in records if r["t"] == "done"), "dropped"


def test_the_file_stays_bounded_when_the_table_is_full(tmp_path: Path) -> None:
    path = tmp_path / "j"
    journal = DeliveryJournal(path, max_entries=50, ttl_seconds=3600, compact_slack=20)
    journal.open(nothing_read_back)
    for commit in range(300):
        batch = [ev(commit * 10 + i) for i in range(10)]
        journal.finish(journal.begin(batch), keys(*batch))
    journal.close()
    stored = sum(
        len(json.loads(line).get("keys", "")) // 32 for line in path.read_text().splitlines()
    )
    assert stored <= 2 * 50 + 20
    reopened = DeliveryJournal(path, max_entries=50, ttl_seconds=3600)
    reopened.open(nothing_read_back)
    assert [n for n in range(3_000) if written(reopened, ev(n))] == list(range(2_950, 3_000))


def test_the_journal_and_its_folder_are_private(tmp_path: Path) -> None:
    """Issue 14: the journal was 0644 in a 0755 folder; it names every tenant's streams."""
    folder = tmp_path / "state"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    path = folder / "ingest.journal"
    path.write_text("")
    path.chmod(0o644)
    old_umask = os.umask(0)  # the widest umask: the modes must not depend on it
    try:
        journal = DeliveryJournal(path, max_entries=1_000, ttl_seconds=60)
        journal.open(lambda *_: set())
        commit = journal.begin([ev(1)])
        journal.finish(commit, keys(ev(1)))
        journal.close()
        fresh = tmp_path / "new" / "deeper" / "ingest.journal"
        other = DeliveryJournal(fresh, max_entries=1_000, ttl_seconds=60)
        other.open(lambda *_: set())
        other.close()
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o600
    assert stat.S_IMODE(fresh.parent.stat().st_mode) == 0o700
