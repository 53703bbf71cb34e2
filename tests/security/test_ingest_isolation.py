"""One request's events that fail inside a shared group commit fail that request alone (issue
14, item 4): the pipeline, driven directly, with events the edge would have refused."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from cloudlog_ingest.pipeline import WritePipeline
from cloudlog_writer.models import EventResult, LogEvent, Outcome


def write_all(events: Sequence[LogEvent]) -> list[EventResult]:
    return [EventResult(event.event_id, Outcome.WRITTEN, None, None) for event in events]


def test_a_poisoned_submission_fails_alone_in_its_commit() -> None:
    async def scenario() -> tuple[list[EventResult], BaseException | None, list[EventResult]]:
        pipeline = WritePipeline(write_all, max_pending_events=1000, max_commit_events=1000)
        pipeline.start()
        # Submitted before the commit loop runs: all three go in one commit.
        before = pipeline.submit([LogEvent("b1", "b/g", "s", 1, "m")], tenant="b")
        poisoned = pipeline.submit([LogEvent("a1", "a/g", "s-\ud800", 1, "m")], tenant="a")
        after = pipeline.submit([LogEvent("b2", "b/g", "s", 2, "m")], tenant="b")
        results = await asyncio.gather(before, poisoned, after, return_exceptions=True)
        await pipeline.stop(5)
        first, error, last = results
        assert isinstance(first, list) and isinstance(last, list)
        assert isinstance(error, BaseException)
        assert pipeline.pending_events == 0
        return first, error, last

    first, error, last = asyncio.run(scenario())
    assert [result.outcome for result in first + last] == [Outcome.WRITTEN] * 2
    assert isinstance(error, UnicodeEncodeError)


def test_a_commit_failing_alone_still_fails(caplog: pytest.LogCaptureFixture) -> None:
    def broken(events: Sequence[LogEvent]) -> list[EventResult]:
        raise RuntimeError("CloudWatch is gone")

    async def scenario() -> list[BaseException | list[EventResult]]:
        pipeline = WritePipeline(broken, max_pending_events=1000, max_commit_events=1000)
        pipeline.start()
        futures = [pipeline.submit([LogEvent(f"e{i}", "g", "s", i, "m")]) for i in range(2)]
        results = await asyncio.gather(*futures, return_exceptions=True)
        await pipeline.stop(5)
        return results

    results = asyncio.run(scenario())
    assert all(isinstance(result, RuntimeError) for result in results)
