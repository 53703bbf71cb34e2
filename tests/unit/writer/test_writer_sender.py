from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from writer_fakes import FakeLogs, client_error

from cloudlog_writer.existence import BoundedTtlCache, ExistenceCache
from cloudlog_writer.models import GroupOptions, LogEvent, Outcome, RejectReason
from cloudlog_writer.retry import BackoffPolicy
from cloudlog_writer.sender import BatchSender

NOW = 1_800_000_000_000


class Sleeps(list[float]):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def make_sender(
    client: Any,
    *,
    sleeps: Sleeps | None = None,
    options: GroupOptions | None = None,
    max_attempts: int = 5,
    existence: ExistenceCache | None = None,
) -> BatchSender:
    policy = BackoffPolicy(
        max_attempts=max_attempts,
        max_total_seconds=1e6,
        base_seconds=0.1,
        max_sleep_seconds=1.0,
        clock=lambda: 0.0,
        sleep=sleeps if sleeps is not None else Sleeps(),
        random=lambda: 0.5,
    )
    return BatchSender(
        client,
        existence=existence if existence is not None else ExistenceCache(100, 3600),
        tokens=BoundedTtlCache(100, 3600),
        policy=policy,
        group_options=lambda _g: options or GroupOptions(),
        now_ms=lambda: NOW,
    )


def events(n: int, group: str = "g", stream: str = "s") -> list[LogEvent]:
    return [LogEvent(f"id{i}", group, stream, NOW + i, f"message {i}") for i in range(n)]


def put_params(batch: list[LogEvent], token: str | None = None) -> dict[str, Any]:
    params: dict[str, Any] = {
        "logGroupName": batch[0].log_group,
        "logStreamName": batch[0].log_stream,
        "logEvents": [{"timestamp": e.timestamp, "message": e.message} for e in batch],
    }
    if token is not None:
        params["sequenceToken"] = token
    return params


STREAM = {"logGroupName": "g", "logStreamName": "s"}


@pytest.fixture
def stubbed() -> Iterator[tuple[Any, Stubber]]:
    client = boto3.client(
        "logs", region_name="us-east-1", aws_access_key_id="k", aws_secret_access_key="s"
    )
    with Stubber(client) as stubber:
        yield client, stubber
        stubber.assert_no_pending_responses()


def written(results: list[Any]) -> bool:
    return all(r.outcome is Outcome.WRITTEN for r in results)


def test_sequence_token_dance(stubbed: tuple[Any, Stubber]) -> None:
    client, stub = stubbed
    batch1, batch2 = events(2), events(3)[2:]
    stub.add_response("create_log_stream", {}, STREAM)
    # First put goes without a token; the legacy endpoint demands one.
    stub.add_client_error(
        "put_log_events",
        "InvalidSequenceTokenException",
        "The given sequenceToken is invalid",
        expected_params=put_params(batch1),
        modeled_fields={"expectedSequenceToken": "tok-1"},
    )
    stub.add_response("put_log_events", {"nextSequenceToken": "tok-2"}, put_params(batch1, "tok-1"))
    stub.add_response("put_log_events", {"nextSequenceToken": "tok-3"}, put_params(batch2, "tok-2"))
    sender = make_sender(client)
    assert written(sender.send("g", "s", batch1))
    assert written(sender.send("g", "s", batch2))


def test_no_token_sent_when_endpoint_never_asks(stubbed: tuple[Any, Stubber]) -> None:
    client, stub = stubbed
    stub.add_response("create_log_stream", {}, STREAM)
    stub.add_response("put_log_events", {"nextSequenceToken": "t"}, put_params(events(1)))
    stub.add_response("put_log_events", {"nextSequenceToken": "t2"}, put_params(events(2)[1:]))
    sender = make_sender(client)
    assert written(sender.send("g", "s", events(1)))
    assert written(sender.send("g", "s", events(2)[1:]))  # still without sequenceToken


def test_data_already_accepted_is_success_and_not_resent(stubbed: tuple[Any, Stubber]) -> None:
    client, stub = stubbed
    batch = events(2)
    stub.add_response("create_log_stream", {}, STREAM)
    stub.add_client_error(
        "put_log_events",
        "DataAlreadyAcceptedException",
        "already accepted",
        expected_params=put_params(batch),
        modeled_fields={"expectedSequenceToken": "tok-9"},
    )
    stub.add_response("put_log_events", {}, put_params(events(3)[2:], "tok-9"))
    sender = make_sender(client)
    results = sender.send("g", "s", batch)
    assert written(results) and len(results) == 2
    # The next batch follows the token the endpoint gave.
    assert written(sender.send("g", "s", events(3)[2:]))


def test_missing_group_is_created_with_retention_tags_and_kms(stubbed: tuple[Any, Stubber]) -> None:
    client, stub = stubbed
    kms = "arn:aws:kms:us-east-1:123456789012:key/abc"
    stub.add_client_error("create_log_stream", "ResourceNotFoundException", expected_params=STREAM)
    stub.add_response(
        "create_log_group", {}, {"logGroupName": "g", "kmsKeyId": kms, "tags": {"team": "a"}}
    )
    stub.add_response("put_retention_policy", {}, {"logGroupName": "g", "retentionInDays": 30})
    stub.add_response("create_log_stream", {}, STREAM)
    stub.add_response("put_log_events", {}, put_params(events(2)))
    existence = ExistenceCache(100, 3600)
    options = GroupOptions(retention_days=30, kms_key_id=kms, tags={"team": "a"})
    sender = make_sender(client, options=options, existence=existence)
    assert written(sender.send("g", "s", events(2)))
    assert existence.group_retention_days("g") == 30


def test_existing_group_and_stream_are_not_recreated(stubbed: tuple[Any, Stubber]) -> None:
    client, stub = stubbed
    stub.add_client_error(
        "create_log_stream", "ResourceAlreadyExistsException", expected_params=STREAM
    )
    stub.add_response("put_log_events", {}, put_params(events(1)))
    stub.add_response("put_log_events", {}, put_params(events(2)[1:]))
    sender = make_sender(client, options=GroupOptions(retention_days=30))
    assert written(sender.send("g", "s", events(1)))
    assert written(sender.send("g", "s", events(2)[1:]))  # cached: no second create


def test_group_deleted_while_running_is_recreated(stubbed: tuple[Any, Stubber]) -> None:
    client, stub = stubbed
    stub.add_response("create_log_stream", {}, STREAM)
    stub.add_response("put_log_events", {}, put_params(events(1)))
    stub.add_client_error("put_log_events", "ResourceNotFoundException")
    stub.add_client_error("create_log_stream", "ResourceNotFoundException", expected_params=STREAM)
    stub.add_response("create_log_group", {}, {"logGroupName": "g"})
    stub.add_response("create_log_stream", {}, STREAM)
    stub.add_response("put_log_events", {}, put_params(events(2)[1:]))
    sender = make_sender(client)
    assert written(sender.send("g", "s", events(1)))
    assert written(sender.send("g", "s", events(2)[1:]))


def test_throttling_backs_off_then_succeeds(stubbed: tuple[Any, Stubber]) -> None:
    client, stub = stubbed
    stub.add_response("create_log_stream", {}, STREAM)
    stub.add_client_error("put_log_events", "ThrottlingException", http_status_code=400)
    stub.add_client_error("put_log_events", "ServiceUnavailableException", http_status_code=503)
    stub.add_response("put_log_events", {}, put_params(events(2)))
    sleeps = Sleeps()
    assert written(make_sender(client, sleeps=sleeps).send("g", "s", events(2)))
    assert sleeps == [0.05, 0.1]  # random 0.5 x ceilings 0.1, 0.2


def test_retries_exhausted_is_reported_per_event(stubbed: tuple[Any, Stubber]) -> None:
    client, stub = stubbed
    stub.add_response("create_log_stream", {}, STREAM)
    for _ in range(3):
        stub.add_client_error("put_log_events", "ThrottlingException")
    sleeps = Sleeps()
    results = make_sender(client, sleeps=sleeps, max_attempts=3).send("g", "s", events(2))
    assert [r.reason for r in results] == [RejectReason.RETRIES_EXHAUSTED] * 2
    assert all("ThrottlingException" in (r.detail or "") for r in results)
    assert len(sleeps) == 2


def test_access_denied_is_not_retried(stubbed: tuple[Any, Stubber]) -> None:
    client, stub = stubbed
    stub.add_response("create_log_stream", {}, STREAM)
    stub.add_client_error("put_log_events", "AccessDeniedException")
    sleeps = Sleeps()
    results = make_sender(client, sleeps=sleeps).send("g", "s", events(3))
    assert [r.reason for r in results] == [RejectReason.ACCESS_DENIED] * 3
    assert sleeps == []


def test_rejected_log_events_info_maps_to_exact_events(stubbed: tuple[Any, Stubber]) -> None:
    client, stub = stubbed
    batch = events(6)
    stub.add_response("create_log_stream", {}, STREAM)
    stub.add_response(
        "put_log_events",
        {"rejectedLogEventsInfo": {"tooOldLogEventEndIndex": 1, "tooNewLogEventStartIndex": 4}},
        put_params(batch),
    )
    results = make_sender(client).send("g", "s", batch)
    assert [r.event_id for r in results] == [e.event_id for e in batch]
    assert [r.reason for r in results] == [
        RejectReason.TOO_OLD, None, None, None, RejectReason.TOO_NEW, RejectReason.TOO_NEW
    ]  # fmt: skip
    assert [r.outcome for r in results][1:4] == [Outcome.WRITTEN] * 3


def test_invalid_batch_is_bisected_to_the_bad_event() -> None:
    fake = FakeLogs()
    batch = events(8)
    batch[5] = LogEvent("bad", "g", "s", NOW + 5, "")  # the service refuses the whole call
    results = make_sender(fake).send("g", "s", batch)
    assert [r.outcome for r in results] == [Outcome.WRITTEN] * 5 + [Outcome.REJECTED] + [
        Outcome.WRITTEN
    ] * 2
    assert results[5].reason is RejectReason.INVALID
    assert fake.messages("g", "s") == [e.message for e in batch if e.event_id != "bad"]


def test_never_describes_streams_and_retention_failure_does_not_block_events() -> None:
    fake = FakeLogs()
    fake.script["put_retention_policy"].append(client_error("InvalidParameterException"))
    existence = ExistenceCache(100, 3600)
    sender = make_sender(fake, options=GroupOptions(retention_days=7), existence=existence)
    assert written(sender.send("g", "s", events(2)))
    assert existence.group_retention_days("g") is None  # not applied, so not assumed
    assert "describe_log_streams" not in fake.ops()
