"""The batch idempotency state machine (idempotency.py) against moto's DynamoDB: new, done,
live lease, expired lease taken over, TTL attribute, and what it costs in requests."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from typing import Any

import boto3
import pytest
from moto import mock_aws

from cloudlog_ingest.idempotency import (
    DUPLICATE_DETAIL,
    TTL_ATTRIBUTE,
    BatchIdempotency,
    BatchInProgress,
    ClaimState,
    answer_from_record,
    batch_key,
    ensure_idempotency_table,
)
from cloudlog_ingest.journal import DeliveryJournal
from cloudlog_ingest.pipeline import WritePipeline
from cloudlog_writer.models import EventResult, LogEvent, Outcome, RejectReason

TABLE = "cloudlog-idempotency"
LEASE = 30.0
TTL = 6 * 3600.0


class Clock:
    def __init__(self) -> None:
        self.now = 1_900_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def client() -> Iterator[Any]:
    with mock_aws():
        dynamodb = boto3.client("dynamodb", region_name="us-east-1")
        assert ensure_idempotency_table(dynamodb, TABLE)
        yield dynamodb


def store(client: Any, clock: Clock, owner: str) -> BatchIdempotency:
    return BatchIdempotency(
        client, TABLE, lease_seconds=LEASE, ttl_seconds=TTL, owner=owner, clock=clock
    )


def record(client: Any, key: str) -> dict[str, Any]:
    item: dict[str, Any] = client.get_item(TableName=TABLE, Key={"pk": {"S": f"batch#{key}"}})
    return item.get("Item") or {}


def requests(idempotency: BatchIdempotency, op: str) -> float:
    return idempotency.requests.labels(op)._value.get()


def events(count: int, start: int = 0, group: str = "g", stream: str = "s") -> list[LogEvent]:
    return [
        LogEvent(f"e{n}", group, stream, 1_000 + n, f"m{n}") for n in range(start, start + count)
    ]


def test_the_table_is_created_once_with_ttl_on_expires_at(client: Any) -> None:
    assert not ensure_idempotency_table(client, TABLE)  # exists: left alone
    ttl = client.describe_time_to_live(TableName=TABLE)["TimeToLiveDescription"]
    assert (ttl["TimeToLiveStatus"], ttl["AttributeName"]) == ("ENABLED", TTL_ATTRIBUTE)


def test_batch_key_is_the_tenant_and_the_events_in_any_order() -> None:
    batch = events(5)
    assert batch_key("t", batch) == batch_key("t", list(reversed(batch)))
    assert batch_key("t", batch) != batch_key("other", batch)
    assert batch_key("t", batch) != batch_key("t", batch[:4])
    moved = [LogEvent(e.event_id, e.log_group, "elsewhere", e.timestamp, e.message) for e in batch]
    assert batch_key("t", batch) != batch_key("t", moved)


def test_a_new_batch_is_claimed_with_a_lease_and_a_ttl(client: Any) -> None:
    clock = Clock()
    replica = store(client, clock, "a")
    assert [c.state for c in replica.claim(["k1"])] == [ClaimState.FRESH]
    item = record(client, "k1")
    assert item["status"]["S"] == "in_progress"
    assert item["owner"]["S"] == "a"
    assert float(item["lease_until"]["N"]) == pytest.approx(clock.now + LEASE)
    assert int(item[TTL_ATTRIBUTE]["N"]) == int(clock.now + TTL)
    assert requests(replica, "TransactWriteItems") == 1


def test_a_live_lease_is_busy_with_the_time_it_has_left(client: Any) -> None:
    clock = Clock()
    store(client, clock, "a").claim(["k1"])
    clock.now += 10
    other = store(client, clock, "b")
    [claim] = other.claim(["k1"])
    assert claim.state is ClaimState.BUSY and claim.retry_after == 20
    # The same replica, asked again while it writes, is busy too.
    assert store(client, clock, "a").claim(["k1"])[0].state is ClaimState.BUSY


def test_a_done_batch_is_answered_from_its_record(client: Any) -> None:
    clock = Clock()
    first, other = store(client, clock, "a"), store(client, clock, "b")
    batch = events(3)
    first.claim(["k1"])
    results = [
        EventResult("e0", Outcome.WRITTEN),
        EventResult("e1", Outcome.REJECTED, RejectReason.TOO_OLD, "older than 14 days"),
        EventResult("e2", Outcome.WRITTEN),
    ]
    first.complete("k1", results)
    # Deferred: the replica that wrote it knows at once; the table once flushed.
    assert first.claim(["k1"])[0].state is ClaimState.DONE
    assert record(client, "k1")["status"]["S"] == "in_progress"
    first.flush()
    item = record(client, "k1")
    assert (item["status"]["S"], item["written"]["N"], item["rejected"]["N"]) == ("done", "2", "1")
    assert int(item[TTL_ATTRIBUTE]["N"]) == int(clock.now + TTL)
    [claim] = other.claim(["k1"])
    assert claim.state is ClaimState.DONE and not claim.must_write
    answer = answer_from_record(batch, claim)
    assert [(r.outcome, r.reason) for r in answer] == [
        (Outcome.WRITTEN, None),
        (Outcome.REJECTED, RejectReason.TOO_OLD),
        (Outcome.WRITTEN, None),
    ]
    assert answer[0].detail == DUPLICATE_DETAIL and answer[1].detail == "older than 14 days"


def test_an_expired_lease_is_taken_over_by_one_replica_only(client: Any) -> None:
    clock = Clock()
    store(client, clock, "dead").claim(["k1"])
    clock.now += LEASE + 1
    taker, late = store(client, clock, "b"), store(client, clock, "c")
    [claim] = taker.claim(["k1"])
    assert claim.state is ClaimState.TAKEN_OVER and claim.must_read_back
    item = record(client, "k1")
    assert item["owner"]["S"] == "b"
    assert float(item["lease_until"]["N"]) == pytest.approx(clock.now + LEASE)
    assert late.claim(["k1"])[0].state is ClaimState.BUSY  # b's lease is live now
    assert requests(taker, "PutItem") == 1


def test_done_marks_ride_on_the_next_claim(client: Any) -> None:
    clock = Clock()
    replica = store(client, clock, "a")
    for n in range(10):
        assert replica.claim([f"k{n}"])[0].state is ClaimState.FRESH
        replica.complete(f"k{n}", [EventResult("e", Outcome.WRITTEN)])
    # One request per batch: each claim carried the previous batch's done mark.
    assert requests(replica, "TransactWriteItems") == 10
    assert [record(client, f"k{n}")["status"]["S"] for n in range(9)] == ["done"] * 9
    assert record(client, "k9")["status"]["S"] == "in_progress"
    replica.flush()
    assert record(client, "k9")["status"]["S"] == "done"
    assert requests(replica, "BatchWriteItem") == 1


def test_a_claim_that_partly_fails_claims_the_rest_in_a_second_request(client: Any) -> None:
    clock = Clock()
    store(client, clock, "a").claim(["old"])
    replica = store(client, clock, "b")
    claims = replica.claim(["new1", "old", "new2", "new1"])
    assert [c.state for c in claims] == [
        ClaimState.FRESH,
        ClaimState.BUSY,
        ClaimState.FRESH,
        ClaimState.BUSY,  # the same batch twice in one commit: the second waits
    ]
    assert record(client, "new2")["owner"]["S"] == "b"
    assert requests(replica, "TransactWriteItems") == 2


def test_release_lets_a_retry_claim_at_once(client: Any) -> None:
    clock = Clock()
    replica = store(client, clock, "a")
    replica.claim(["k1"])
    store(client, clock, "b").release(["k1"])  # not b's: left alone
    assert record(client, "k1")
    replica.release(["k1"])
    assert record(client, "k1") == {}
    assert store(client, clock, "b").claim(["k1"])[0].state is ClaimState.FRESH


# -- through the pipeline: replicas sharing the table ----------------------------------------


class Writer:
    def __init__(self) -> None:
        self.written: list[LogEvent] = []

    def __call__(self, batch: Sequence[LogEvent]) -> list[EventResult]:
        self.written.extend(batch)
        return [EventResult(e.event_id, Outcome.WRITTEN) for e in batch]


def replica(
    client: Any, clock: Clock, owner: str, writer: Writer, read_back: Any = None
) -> WritePipeline:
    return WritePipeline(
        writer,
        max_pending_events=100_000,
        max_commit_events=50_000,
        journal=DeliveryJournal(None, max_entries=100_000, ttl_seconds=3600),
        idempotency=store(client, clock, owner),
        read_back=read_back,
    )


async def deliver(
    pipeline: WritePipeline, batch: list[LogEvent], tenant: str = "t"
) -> list[EventResult]:
    return await pipeline.submit(batch, tenant, idempotent=True)


def test_a_batch_redelivered_to_another_replica_is_not_written_again(client: Any) -> None:
    clock = Clock()
    written_a, written_b = Writer(), Writer()

    async def scenario() -> list[EventResult]:
        a, b = replica(client, clock, "a", written_a), replica(client, clock, "b", written_b)
        a.start()
        b.start()
        batch = events(100)
        assert all(r.written for r in await deliver(a, batch))
        with pytest.raises(BatchInProgress):  # a has not marked it done in the table yet
            await deliver(b, batch)
        assert a._idempotency is not None
        a._idempotency.flush()
        again = await deliver(b, list(reversed(batch)))
        await a.stop(5)
        await b.stop(5)
        return again

    again = asyncio.run(scenario())
    assert len(written_a.written) == 100 and written_b.written == []
    assert all(r.written and r.detail == DUPLICATE_DETAIL for r in again)
    assert len(again) == 100


def test_a_taken_over_batch_writes_only_what_cloudwatch_lacks(client: Any) -> None:
    clock = Clock()
    batch = events(10)
    read: list[tuple[str, str, int, int]] = []

    def read_back(group: str, stream: str, start: int, end: int) -> set[str]:
        read.append((group, stream, start, end))
        return {"e0", "e1", "e2"}  # the dead replica got these far

    store(client, clock, "dead").claim([batch_key("t", batch)])
    clock.now += LEASE + 1
    writer = Writer()

    async def scenario() -> list[EventResult]:
        b = replica(client, clock, "b", writer, read_back)
        b.start()
        results = await deliver(b, batch)
        await b.stop(5)
        assert b._idempotency is not None
        b._idempotency.close()  # as the app does at shutdown: the done mark is flushed
        return results

    results = asyncio.run(scenario())
    assert read == [("g", "s", 1_000, 1_009)]
    assert [e.event_id for e in writer.written] == [f"e{n}" for n in range(3, 10)]
    assert all(r.written for r in results)
    assert record(client, batch_key("t", batch))["status"]["S"] == "done"


def test_a_failed_commit_releases_its_claim(client: Any) -> None:
    clock = Clock()

    def broken(batch: Sequence[LogEvent]) -> list[EventResult]:
        raise RuntimeError("CloudWatch is down")

    async def scenario() -> None:
        pipeline = WritePipeline(
            broken,
            max_pending_events=1000,
            max_commit_events=1000,
            idempotency=store(client, clock, "a"),
        )
        pipeline.start()
        with pytest.raises(RuntimeError):
            await pipeline.submit(events(3), "t", idempotent=True)
        await pipeline.stop(5)

    asyncio.run(scenario())
    assert record(client, batch_key("t", events(3))) == {}


def test_requests_per_thousand_events_at_default_task_size(client: Any) -> None:
    """1,000-event tasks, one commit each (the worst case: no two tasks share a commit)."""
    clock = Clock()
    writer = Writer()
    tasks = 20

    async def scenario() -> BatchIdempotency:
        pipeline = replica(client, clock, "a", writer)
        pipeline.start()
        for n in range(tasks):
            await deliver(pipeline, events(1_000, start=n * 1_000))
        await pipeline.stop(5)
        assert pipeline._idempotency is not None
        pipeline._idempotency.close()
        return pipeline._idempotency

    used = asyncio.run(scenario())
    total = sum(requests(used, op) for op in ("TransactWriteItems", "BatchWriteItem", "PutItem"))
    assert len(writer.written) == tasks * 1_000
    per_thousand = total / tasks
    assert per_thousand <= 1.05, per_thousand  # 20 claims + the last done mark: 21 / 20
