from __future__ import annotations

from pathlib import Path

from services.ingest.journal import DeliveryJournal
from services.writer.models import LogEvent


def ev(n: int, stream: str = "s", ts: int = 1_000) -> LogEvent:
    return LogEvent(f"id{n}", "g", stream, ts + n, f"m{n}")


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
    journal.finish(commit, [ev(1)])  # ev(2) was rejected, not written
    journal.close()

    reopened = DeliveryJournal(path, max_entries=1000, ttl_seconds=3600)
    recovery = reopened.open(nothing_read_back)
    assert reopened.written(ev(1)) and not reopened.written(ev(2))
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
    assert reopened.written(ev(1, "a"))
    assert not reopened.written(ev(5, "a")) and not reopened.written(ev(2, "b"))
    assert (recovery.unfinished_commits, recovery.recovered_keys) == (1, 1)

    # Recovery is settled: a third start has nothing left to recover.
    reopened.close()
    third = DeliveryJournal(path, max_entries=1000, ttl_seconds=3600)
    assert third.open(nothing_read_back).unfinished_commits == 0
    assert third.written(ev(1, "a"))


def test_keys_older_than_the_ttl_are_forgotten(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "j"
    journal = DeliveryJournal(path, max_entries=1000, ttl_seconds=60, clock=clock)
    journal.open(nothing_read_back)
    journal.finish(journal.begin([ev(1)]), [ev(1)])
    clock.now += 30
    journal.finish(journal.begin([ev(2)]), [ev(2)])
    journal.close()
    clock.now += 45  # ev(1) is 75 s old, ev(2) 45 s
    reopened = DeliveryJournal(path, max_entries=1000, ttl_seconds=60, clock=clock)
    reopened.open(nothing_read_back)
    assert not reopened.written(ev(1)) and reopened.written(ev(2))


def test_memory_is_bounded_by_max_entries_oldest_out_first(tmp_path: Path) -> None:
    journal = DeliveryJournal(None, max_entries=3, ttl_seconds=3600)
    journal.open(nothing_read_back)
    for n in range(5):
        journal.finish(journal.begin([ev(n)]), [ev(n)])
    assert len(journal) == 3
    assert [journal.written(ev(n)) for n in range(5)] == [False, False, True, True, True]


def test_a_torn_last_line_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "j"
    journal = DeliveryJournal(path, max_entries=1000, ttl_seconds=3600)
    journal.open(nothing_read_back)
    journal.finish(journal.begin([ev(1)]), [ev(1)])
    journal.close()
    with path.open("a") as out:
        out.write('{"t":"done","c":9,"keys":["ab')  # a crash mid-append
    reopened = DeliveryJournal(path, max_entries=1000, ttl_seconds=3600)
    reopened.open(nothing_read_back)
    assert reopened.written(ev(1))


def test_compaction_keeps_commits_still_in_flight(tmp_path: Path) -> None:
    path = tmp_path / "j"
    # Few live keys (max_entries=5), many records: compaction runs several times.
    journal = DeliveryJournal(path, max_entries=5, ttl_seconds=3600, compact_slack=2)
    journal.open(nothing_read_back)
    journal.begin([ev(100, "slow")])
    for n in range(20):
        journal.finish(journal.begin([ev(n)]), [ev(n)])
    assert len(path.read_text().splitlines()) < 20, "the file was compacted"
    journal.close()  # the process dies with the slow commit unfinished

    reopened = DeliveryJournal(path, max_entries=5, ttl_seconds=3600)
    recovery = reopened.open(lambda g, s, lo, hi: {"id100"} if s == "slow" else set())
    assert recovery.unfinished_commits == 1
    assert reopened.written(ev(100, "slow"))
    assert [n for n in range(20) if reopened.written(ev(n))] == [16, 17, 18, 19]
