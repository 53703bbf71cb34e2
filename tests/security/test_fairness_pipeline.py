"""The group commit, driven directly: one tenant's slow commit, flood or new streams do not
delay, refuse or unready another (issue 14, items 5 and 6)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import pytest

from cloudlog_ingest.journal import DeliveryJournal
from cloudlog_ingest.pipeline import NewStreamsOverQuota, Overloaded, WritePipeline
from cloudlog_ingest.quotas import NewStreamQuotas
from cloudlog_writer.models import EventResult, LogEvent, Outcome


def written(events: Sequence[LogEvent]) -> list[EventResult]:
    return [EventResult(event.event_id, Outcome.WRITTEN) for event in events]


def events(tenant: str, count: int, streams: int = 1, start: int = 0) -> list[LogEvent]:
    return [
        LogEvent(f"{tenant}-{start + i}", f"{tenant}/g", f"s{i % streams}", 1, "m")
        for i in range(count)
    ]


def test_a_slow_tenant_commit_does_not_delay_another_tenant() -> None:
    release = threading.Event()

    def write(batch: Sequence[LogEvent]) -> list[EventResult]:
        if batch[0].log_group.startswith("slow/"):
            assert release.wait(10), "never released"
        return written(batch)

    async def scenario() -> None:
        pipeline = WritePipeline(write, max_pending_events=1_000, max_commit_events=1_000)
        pipeline.start()
        slow = pipeline.submit(events("slow", 10), tenant="slow")
        await asyncio.sleep(0.05)  # the slow commit is under way
        quick = pipeline.submit(events("quick", 1), tenant="quick")
        results = await asyncio.wait_for(quick, 2)  # answered while the slow one is held
        assert [r.outcome for r in results] == [Outcome.WRITTEN]
        assert not slow.done()
        release.set()
        assert len(await asyncio.wait_for(slow, 5)) == 10
        await pipeline.stop(5)
        assert pipeline.pending_events == 0

    asyncio.run(scenario())


def test_two_floods_cannot_fill_the_bound_for_a_quiet_tenant() -> None:
    release = threading.Event()

    def held(batch: Sequence[LogEvent]) -> list[EventResult]:
        assert release.wait(10)
        return written(batch)

    async def scenario() -> None:
        pipeline = WritePipeline(
            held,
            max_pending_events=1_000,
            max_pending_events_per_tenant=500,
            max_commit_events=1_000,
            pending_reserve_fraction=0.2,  # 200 kept for quiet tenants, 50 each at most
        )
        pipeline.start()
        futures = [pipeline.submit(events("one", 500), tenant="one")]
        with pytest.raises(Overloaded):
            pipeline.submit(events("one", 1, start=500), tenant="one")  # its own bound
        futures.append(pipeline.submit(events("two", 300), tenant="two"))
        with pytest.raises(Overloaded):
            pipeline.submit(events("two", 1, start=300), tenant="two")  # the shared part is full
        with pytest.raises(Overloaded):
            pipeline.submit(events("three", 51), tenant="three")  # more than a quiet share
        futures += [pipeline.submit(events("quiet", 50), tenant="quiet")]
        futures += [pipeline.submit(events(f"q{n}", 10), tenant=f"q{n}") for n in range(3)]
        # Ready: "one" is at its own bound; the others hold 380 of 1,000.
        assert pipeline.pending_events == 880
        assert pipeline.saturation_pending == 380
        release.set()
        await asyncio.wait_for(asyncio.gather(*futures), 5)
        await pipeline.stop(5)

    asyncio.run(scenario())


def test_without_a_reserve_the_bounds_are_as_before() -> None:
    async def scenario() -> None:
        pipeline = WritePipeline(written, max_pending_events=2, max_commit_events=10)
        first = pipeline.submit(events("a", 2), tenant="a")
        with pytest.raises(Overloaded):
            pipeline.submit(events("b", 1), tenant="b")
        pipeline.start()
        await first
        await pipeline.stop(5)

    asyncio.run(scenario())


def test_new_streams_are_a_quota_checked_before_anything_is_queued() -> None:
    now = [0.0]
    quota = NewStreamQuotas(rate=10, burst=20, clock=lambda: now[0])

    async def scenario() -> None:
        pipeline = WritePipeline(
            written, max_pending_events=10_000, max_commit_events=10_000, new_streams=quota
        )
        pipeline.start()
        # 19 streams + their group: 20 creations, the whole burst.
        await pipeline.submit(events("a", 19, streams=19), tenant="a")
        # The same streams again cost nothing: they are known.
        await pipeline.submit(events("a", 19, streams=19, start=100), tenant="a")
        with pytest.raises(NewStreamsOverQuota) as refused:
            pipeline.submit(
                [LogEvent("x", "a/g", "brand-new", 1, "m"), LogEvent("y", "a/g", "s0", 1, "m")],
                tenant="a",
            )
        assert refused.value.retry_after == 1 and pipeline.pending_events == 0
        assert "1 log groups and streams" in refused.value.detail
        # Another tenant's quota is its own.
        await pipeline.submit(events("b", 5, streams=5), tenant="b")
        now[0] += 0.1  # one token back
        await pipeline.submit([LogEvent("x", "a/g", "brand-new", 1, "m")], tenant="a")
        # A request over the burst waits for a full bucket, then goes through in debt.
        with pytest.raises(NewStreamsOverQuota) as big:
            pipeline.submit(events("a", 50, streams=50, start=1_000), tenant="a")
        assert big.value.retry_after == 2  # 20 tokens at 10/s
        now[0] += 2
        await pipeline.submit(
            [LogEvent(f"n{i}", "a/g", f"new-{i}", 1, "m") for i in range(50)], tenant="a"
        )
        with pytest.raises(NewStreamsOverQuota) as indebted:
            pipeline.submit([LogEvent("z", "a/g", "one-more", 1, "m")], tenant="a")
        assert indebted.value.retry_after == 4  # 30 in debt + 1 at 10/s
        await pipeline.stop(5)

    asyncio.run(scenario())


class RecordingJournal(DeliveryJournal):
    def __init__(self) -> None:
        super().__init__(None, max_entries=10_000, ttl_seconds=3600)
        self.begun: list[int] = []

    def begin(self, events: Sequence[LogEvent]) -> int:
        self.begun.append(len({(event.log_group, event.log_stream) for event in events}))
        return super().begin(events)


def test_a_journal_begin_record_covers_a_bounded_number_of_streams() -> None:
    journal = RecordingJournal()
    calls: list[int] = []

    def write(batch: Sequence[LogEvent]) -> list[EventResult]:
        calls.append(len(batch))
        return written(batch)

    async def scenario() -> list[EventResult]:
        pipeline = WritePipeline(
            write,
            max_pending_events=10_000,
            max_commit_events=10_000,
            max_commit_streams=100,
            journal=journal,
        )
        pipeline.start()
        # 1,000 events over 250 streams, a stream's events spread over the whole request.
        results = await pipeline.submit(events("a", 1_000, streams=250), tenant="a")
        await pipeline.stop(5)
        return results

    results = asyncio.run(scenario())
    assert [r.event_id for r in results] == [f"a-{i}" for i in range(1_000)]
    assert all(r.outcome is Outcome.WRITTEN for r in results)
    assert journal.begun == [100, 100, 50]
    assert calls == [400, 400, 200], "each stream's events in one chunk"
