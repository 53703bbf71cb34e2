from __future__ import annotations

import threading
from typing import Any

import pytest
from botocore.exceptions import EndpointConnectionError, ReadTimeoutError
from writer_fakes import FakeLogs, client_error

from cloudlog_writer import (
    CloudWatchWriter,
    GroupOptions,
    LogEvent,
    Outcome,
    RejectReason,
    WriterSettings,
)
from cloudlog_writer.limits import (
    MAX_BATCH_EVENTS,
    MAX_BATCH_SPAN_MS,
    MAX_EVENT_AGE_MS,
    MAX_FUTURE_MS,
    MS_PER_DAY,
)
from cloudlog_writer.splitting import parse_marker, reassemble

NOW_MS = 1_800_000_000_000


def make_writer(fake: FakeLogs, **settings: Any) -> CloudWatchWriter:
    options = settings.pop("group_options", None)
    return CloudWatchWriter(
        fake,
        WriterSettings(**settings),
        group_options=options,
        clock=lambda: NOW_MS / 1000,
        sleep=lambda _s: None,
    )


def ev(
    eid: str, ts: int = NOW_MS, msg: str | None = None, group: str = "g", stream: str = "s"
) -> LogEvent:
    return LogEvent(eid, group, stream, ts, msg if msg is not None else f"msg-{eid}")


def test_one_result_per_event_in_input_order_with_reasons() -> None:
    fake = FakeLogs()
    events = [
        ev("a", NOW_MS + 2),
        ev("old", NOW_MS - MAX_EVENT_AGE_MS - 1),
        ev("b", NOW_MS + 1, stream="other"),
        ev("new", NOW_MS + MAX_FUTURE_MS + 1),
        ev("empty", msg=""),
        ev("badname", group="aws/reserved"),
        ev("c", NOW_MS),
    ]
    with make_writer(fake) as writer:
        results = writer.write(events)
    assert [r.event_id for r in results] == [e.event_id for e in events]
    assert [(r.outcome, r.reason) for r in results] == [
        (Outcome.WRITTEN, None),
        (Outcome.REJECTED, RejectReason.TOO_OLD),
        (Outcome.WRITTEN, None),
        (Outcome.REJECTED, RejectReason.TOO_NEW),
        (Outcome.REJECTED, RejectReason.INVALID),
        (Outcome.REJECTED, RejectReason.INVALID),
        (Outcome.WRITTEN, None),
    ]
    assert fake.messages("g", "s") == ["msg-c", "msg-a"]  # chronological
    assert fake.messages("g", "other") == ["msg-b"]
    assert "describe_log_streams" not in fake.ops()


def test_every_event_of_a_stream_with_invalid_names_is_refused_with_the_reason() -> None:
    fake = FakeLogs()
    events = [ev("x1", stream="bad:name"), ev("ok"), ev("x2", stream="bad:name")]
    with make_writer(fake) as writer:
        results = writer.write(events)
    assert [(r.event_id, r.outcome) for r in results] == [
        ("x1", Outcome.REJECTED),
        ("ok", Outcome.WRITTEN),
        ("x2", Outcome.REJECTED),
    ]
    for refused in (results[0], results[2]):
        assert refused.reason is RejectReason.INVALID
        assert refused.detail == "invalid log stream name 'bad:name'"
    assert fake.messages("g", "s") == ["msg-ok"]
    assert all(args.get("logStreamName") != "bad:name" for _, args in fake.calls)


def test_equal_timestamps_keep_input_order() -> None:
    fake = FakeLogs()
    events = [ev(f"e{i}", NOW_MS + (i % 3)) for i in range(30)]
    with make_writer(fake) as writer:
        assert all(r.written for r in writer.write(events))
    expected = [e.message for e in sorted(events, key=lambda e: e.timestamp)]
    assert fake.messages("g", "s") == expected


def test_events_are_partitioned_by_stream_keeping_input_order() -> None:
    fake = FakeLogs()
    events = [
        ev("e0", stream="a"),
        ev("e1", stream="b"),
        ev("e2", stream="a"),
        ev("e3", group="h"),
        ev("e4", stream="b"),
    ]
    with make_writer(fake) as writer:
        assert all(r.written for r in writer.write(events))
    assert fake.messages("g", "a") == ["msg-e0", "msg-e2"]
    assert fake.messages("g", "b") == ["msg-e1", "msg-e4"]
    assert fake.messages("h", "s") == ["msg-e3"]


def test_empty_write() -> None:
    with make_writer(FakeLogs()) as writer:
        assert writer.write([]) == []


def test_large_write_respects_every_batch_limit() -> None:
    # 15,000 events a millisecond apart (count limit), then 3 events 30 h apart (span limit).
    fake = FakeLogs()
    start = NOW_MS - 5 * MS_PER_DAY
    hour = 3_600_000
    events = [ev(f"e{i}", start + i) for i in range(15_000)]
    events += [ev(f"late{k}", start + 30 * hour * (k + 1)) for k in range(3)]
    with make_writer(fake) as writer:
        results = writer.write(events)
    assert all(r.written for r in results)
    puts = [kw["logEvents"] for op, kw in fake.calls if op == "put_log_events"]
    assert [len(p) for p in puts] == [MAX_BATCH_EVENTS, 5_000, 1, 1, 1]
    assert all(p[-1]["timestamp"] - p[0]["timestamp"] <= MAX_BATCH_SPAN_MS for p in puts)
    assert fake.messages("g", "s") == [e.message for e in events]


def test_oversized_event_is_split_and_reassembles() -> None:
    fake = FakeLogs(max_event_bytes=1024)
    big = "😀" * 1000 + "end"  # about 4 KB
    with make_writer(fake, max_event_bytes=1024) as writer:
        results = writer.write([ev("before"), ev("big", msg=big), ev("after")])
    assert all(r.written for r in results)
    stored = fake.messages("g", "s")
    assert len(stored) > 3
    assert reassemble(stored) == ["msg-before", big, "msg-after"]


def test_split_event_is_written_only_if_all_parts_are() -> None:
    fake = FakeLogs(max_event_bytes=1024)

    def reject_last_part(log_events: list[dict[str, Any]]) -> dict[str, int]:
        last = max(i for i, e in enumerate(log_events) if parse_marker(e["message"]))
        return {"tooNewLogEventStartIndex": last}

    fake.rejected_info = reject_last_part
    with make_writer(fake, max_event_bytes=1024) as writer:
        results = writer.write([ev("big", NOW_MS, "x" * 5000), ev("later", NOW_MS + 1)])
    assert results[0].outcome is Outcome.REJECTED
    assert results[0].reason is RejectReason.TOO_NEW
    assert results[1].reason is RejectReason.TOO_NEW  # after the first too-new index


def test_group_deleted_between_writes_is_recreated_with_options() -> None:
    fake = FakeLogs()
    opts = GroupOptions(retention_days=14, tags={"tenant": "t1"})
    with make_writer(fake, group_options=lambda _g: opts) as writer:
        assert writer.write([ev("1")])[0].written
        fake.delete_log_group("g")
        assert writer.write([ev("2")])[0].written
    assert fake.messages("g", "s") == ["msg-2"]
    assert fake.groups["g"]["retentionInDays"] == 14
    assert fake.groups["g"]["tags"] == {"tenant": "t1"}
    assert fake.ops().count("create_log_group") == 2


def test_known_retention_rejects_expired_events_before_sending() -> None:
    fake = FakeLogs()
    with make_writer(fake, retention_days=3) as writer:
        assert writer.write([ev("first")])[0].written  # creates the group with 3-day retention
        results = writer.write([ev("expired", NOW_MS - 4 * MS_PER_DAY), ev("ok")])
    assert results[0].reason is RejectReason.EXPIRED
    assert results[1].written
    assert "msg-expired" not in fake.messages("g", "s")


def test_streams_in_parallel_but_one_put_per_stream() -> None:
    fake = FakeLogs(put_delay=0.02)

    def events_of(thread: int) -> list[LogEvent]:
        # 6 streams x 3 batches each (a 2-day gap forces a new batch).
        return [
            ev(f"{thread}-{s}-{d}", NOW_MS - (3 - d) * 2 * MS_PER_DAY, stream=f"s{s}")
            for s in range(6)
            for d in range(3)
        ]

    with make_writer(fake, stream_parallelism=4) as writer:
        outcomes: list[list[bool]] = []
        threads = [
            threading.Thread(
                target=lambda t=t: outcomes.append([r.written for r in writer.write(events_of(t))])
            )
            for t in range(3)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert outcomes == [[True] * 18] * 3
    assert max(fake.max_in_flight.values()) == 1  # never two puts at once on one stream
    # Streams in parallel, within the pool bound: the pool's 4 threads plus each of the 3
    # callers, which works on its own streams too (fairpool.py).
    assert 1 < fake.max_total_in_flight <= 4 + 3
    assert all(len(fake.messages("g", f"s{s}")) == 9 for s in range(6))


def test_redelivered_events_are_not_written_twice() -> None:
    fake = FakeLogs()
    batch = [ev("1"), ev("2"), ev("1")]  # an exact duplicate inside the call too
    with make_writer(fake) as writer:
        assert [r.written for r in writer.write(batch)] == [True, True, True]
        assert [r.written for r in writer.write(batch[:2])] == [True, True]
        # Same id, different content: a different event, written.
        assert writer.write([ev("1", msg="changed")])[0].written
    assert fake.messages("g", "s") == ["msg-1", "msg-2", "changed"]


def test_failed_events_are_not_remembered_and_dedupe_can_be_off() -> None:
    fake = FakeLogs()
    fake.script["put_log_events"].append(client_error("ThrottlingException"))
    with make_writer(fake, max_attempts=1) as writer:
        assert writer.write([ev("1")])[0].reason is RejectReason.RETRIES_EXHAUSTED
        assert writer.write([ev("1")])[0].written
    assert fake.messages("g", "s") == ["msg-1"]
    off = FakeLogs()
    with make_writer(off, dedupe_max_entries=0) as writer:
        writer.write([ev("1")])
        writer.write([ev("1")])
    assert off.messages("g", "s") == ["msg-1", "msg-1"]


def test_exhausted_retries_fail_the_rest_of_the_stream_without_more_calls() -> None:
    fake = FakeLogs()
    fake.script["put_log_events"].extend(client_error("ThrottlingException") for _ in range(2))
    events = [ev(f"d{d}", NOW_MS - (3 - d) * 2 * MS_PER_DAY) for d in range(3)]  # 3 batches
    with make_writer(fake, max_attempts=2) as writer:
        results = writer.write(events)
    assert [r.reason for r in results] == [RejectReason.RETRIES_EXHAUSTED] * 3
    assert fake.ops().count("put_log_events") == 2


def test_write_after_close_is_refused() -> None:
    writer = make_writer(FakeLogs())
    writer.close()
    writer.close()  # idempotent
    with pytest.raises(RuntimeError):
        writer.write([ev("x")])


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLOUDLOG_WRITER_MAX_ATTEMPTS", "3")
    monkeypatch.setenv("CLOUDLOG_WRITER_MAX_EVENT_BYTES", "262144")
    monkeypatch.setenv("CLOUDLOG_WRITER_TAGS", '{"team": "logs"}')
    settings = WriterSettings()
    assert settings.max_attempts == 3
    assert settings.max_event_bytes == 262_144
    assert settings.default_group_options().tags == {"team": "logs"}
    with pytest.raises(ValueError):
        WriterSettings(retention_days=2)  # not a PutRetentionPolicy value
    with pytest.raises(ValueError):
        WriterSettings(max_event_bytes=2_000_000)  # above the batch limit


def test_split_event_with_a_failed_batch_of_parts_is_rejected() -> None:
    # ~1,200 parts of 1 KB: they need two PutLogEvents batches; the second one is refused.
    fake = FakeLogs(max_event_bytes=1024)
    big = "y" * 1_200_000
    original_put = fake.put_log_events
    puts = []

    def put_then_deny(**kwargs: Any) -> dict[str, Any]:
        puts.append(kwargs)
        if len(puts) == 2:
            raise client_error("AccessDeniedException")
        return original_put(**kwargs)

    fake.put_log_events = put_then_deny  # type: ignore[method-assign]
    with make_writer(fake, max_event_bytes=1024) as writer:
        results = writer.write([ev("small", NOW_MS - 1), ev("big", NOW_MS, big)])
    assert len(puts) == 2
    assert results[0].written
    assert results[1].outcome is Outcome.REJECTED
    assert results[1].reason is RejectReason.ACCESS_DENIED
    assert len(fake.messages("g", "s")) > 1  # the first batch of parts did land


def test_close_waits_for_a_write_under_way() -> None:
    fake = FakeLogs(put_delay=0.2)
    writer = make_writer(fake)
    outcome: list[bool] = []
    thread = threading.Thread(target=lambda: outcome.append(writer.write([ev("1")])[0].written))
    thread.start()
    while not fake.calls:  # the write has reached the endpoint
        threading.Event().wait(0.005)
    writer.close()
    thread.join()
    assert outcome == [True]
    assert fake.messages("g", "s") == ["msg-1"]


def test_connection_errors_and_create_races_are_retried() -> None:
    fake = FakeLogs()
    fake.script["create_log_group"].append(client_error("OperationAbortedException"))
    fake.script["put_log_events"].append(EndpointConnectionError(endpoint_url="http://x"))
    fake.script["put_log_events"].append(ReadTimeoutError(endpoint_url="http://x"))
    with make_writer(fake) as writer:
        assert writer.write([ev("1")])[0].written
    assert fake.messages("g", "s") == ["msg-1"]
    assert fake.ops().count("create_log_group") == 2


def test_an_internal_error_still_yields_one_result_per_event() -> None:
    fake = FakeLogs()
    with make_writer(fake) as writer:
        writer._sender.failures = None  # type: ignore[method-assign,assignment]  # simulate a bug
        results = writer.write([ev("1"), ev("2", stream="other")])
    assert [r.reason for r in results] == [RejectReason.RETRIES_EXHAUSTED] * 2
    assert all("internal writer error" in (r.detail or "") for r in results)


def test_exact_duplicates_share_a_result_even_among_events_sharing_an_id() -> None:
    fake = FakeLogs()
    events = [
        ev("a", stream="x"),
        ev("a"),
        ev("a"),  # an exact duplicate of the one before, not of the first "a"
        ev("a", msg="same id, other text"),
        ev("old", NOW_MS - MAX_EVENT_AGE_MS - 1),
        ev("old", NOW_MS - MAX_EVENT_AGE_MS - 1),
    ]
    with make_writer(fake) as writer:
        results = writer.write(events)
    assert [r.written for r in results] == [True] * 4 + [False] * 2
    assert results[5] is results[4]
    assert fake.messages("g", "x") == ["msg-a"]
    assert fake.messages("g", "s") == ["msg-a", "same id, other text"]


def test_non_ascii_messages_are_measured_in_utf8_bytes() -> None:
    fake = FakeLogs()
    fits = "é" * 499  # 998 bytes + 26 = 1,024
    too_big = "é" * 500  # 1,000 bytes + 26: one byte over
    with make_writer(fake, max_event_bytes=1024) as writer:
        results = writer.write([ev("fits", msg=fits), ev("big", NOW_MS + 1, msg=too_big)])
    assert all(r.written for r in results)
    stored = fake.messages("g", "s")
    assert stored[0] == fits
    assert [parse_marker(m) is not None for m in stored[1:]] == [True] * (len(stored) - 1)
    assert reassemble(stored) == [fits, too_big]


def test_the_writer_client_skips_botocore_parameter_validation() -> None:
    from botocore.validate import ParamValidationDecorator

    from cloudlog_core.aws import AwsSettings, make_client
    from cloudlog_writer import make_logs_client

    aws = AwsSettings(aws_endpoint_url="http://127.0.0.1:9")
    writers = make_logs_client(WriterSettings(), aws)
    assert not isinstance(writers._serializer, ParamValidationDecorator)
    assert isinstance(make_client("logs", aws)._serializer, ParamValidationDecorator)
