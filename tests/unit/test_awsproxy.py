"""AwsProxy against a real in-process moto server, driven by real boto3 clients."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError

from cloudlog_devtools.awsproxy import (
    LEGACY_MAX_EVENT_BYTES,
    MAX_BATCH_BYTES,
    AwsProxy,
    validate_put_log_events,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
# What a SigV4 Authorization header looks like; moto routes query-protocol calls by its scope.
SQS_AUTH = (
    "AWS4-HMAC-SHA256 Credential=testing/20250101/us-east-1/sqs/aws4_request, "
    "SignedHeaders=host, Signature=0"
)
HOUR_MS = 3_600_000


@pytest.fixture
def proxy(moto_url: str) -> Iterator[AwsProxy]:
    with AwsProxy(moto_url, seed=1234) as started:
        yield started


def make_client(
    service: str, endpoint: str, *, attempts: int = 1, read_timeout: float = 10.0
) -> Any:
    factory: Any = boto3.client  # the stubs overload per literal service name
    return factory(
        service,
        endpoint_url=endpoint,
        region_name="us-east-1",
        config=Config(
            retries={"mode": "standard", "total_max_attempts": attempts},
            connect_timeout=2,
            read_timeout=read_timeout,
        ),
        **CREDENTIALS,
    )


@pytest.fixture
def logs(proxy: AwsProxy) -> Any:
    return make_client("logs", proxy.url)


@pytest.fixture
def stream(moto_url: str) -> tuple[str, str]:
    """A fresh log group and stream, created directly on moto (not counted by the proxy)."""
    direct = make_client("logs", moto_url)
    group, name = f"/cloudlog/test/{uuid.uuid4().hex}", "stream-1"
    direct.create_log_group(logGroupName=group)
    direct.create_log_stream(logGroupName=group, logStreamName=name)
    return group, name


def now_ms() -> int:
    return int(time.time() * 1000)


def stored_messages(moto_url: str, group: str, stream: str) -> list[str]:
    direct = make_client("logs", moto_url)
    events = direct.get_log_events(
        logGroupName=group, logStreamName=stream, startFromHead=True, limit=10_000
    )["events"]
    return [event["message"] for event in events]


def raw_post(proxy: AwsProxy, target: str, payload: object) -> tuple[int, dict[str, Any]]:
    """A JSON-protocol request botocore would refuse to send (it validates minimum lengths)."""
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    try:
        conn.request(
            "POST",
            "/",
            body=json.dumps(payload),
            headers={
                "Content-Type": "application/x-amz-json-1.1",
                "X-Amz-Target": target,
                "Authorization": SQS_AUTH.replace("/sqs/", "/logs/"),
            },
        )
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, json.loads(body) if body.strip() else {}
    finally:
        conn.close()


# --- forwarding and accounting -------------------------------------------------------------


def test_logs_requests_are_forwarded_and_counted(proxy: AwsProxy, logs: Any, moto_url: str) -> None:
    group = f"/cloudlog/test/{uuid.uuid4().hex}"
    logs.create_log_group(logGroupName=group)
    logs.create_log_stream(logGroupName=group, logStreamName="s")
    ts = now_ms()
    logs.put_log_events(
        logGroupName=group,
        logStreamName="s",
        logEvents=[{"timestamp": ts, "message": "héllo"}, {"timestamp": ts, "message": "two"}],
    )
    got = logs.get_log_events(logGroupName=group, logStreamName="s", startFromHead=True)

    assert [e["message"] for e in got["events"]] == ["héllo", "two"]
    assert stored_messages(moto_url, group, "s") == ["héllo", "two"]
    assert proxy.counts() == {
        "logs.CreateLogGroup": 1,
        "logs.CreateLogStream": 1,
        "logs.PutLogEvents": 1,
        "logs.GetLogEvents": 1,
    }
    assert proxy.total() == 4
    assert proxy.violations() == []
    proxy.reset_counts()
    assert proxy.counts() == {}
    assert proxy.total() == 0


def test_sqs_json_protocol_is_forwarded_and_counted(proxy: AwsProxy) -> None:
    sqs = make_client("sqs", proxy.url)
    queue_url = sqs.create_queue(QueueName=f"q-{uuid.uuid4().hex[:12]}")["QueueUrl"]
    sqs.send_message(QueueUrl=queue_url, MessageBody="payload-1")
    received = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=1, WaitTimeSeconds=0)
    (message,) = received["Messages"]
    sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])

    assert message["Body"] == "payload-1"
    assert proxy.counts() == {
        "sqs.CreateQueue": 1,
        "sqs.SendMessage": 1,
        "sqs.ReceiveMessage": 1,
        "sqs.DeleteMessage": 1,
    }


def test_sqs_query_protocol_is_forwarded_and_counted(proxy: AwsProxy) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    conn.request(
        "POST",
        "/",
        body="Action=ListQueues&Version=2012-11-05",
        headers={"Content-Type": "application/x-www-form-urlencoded", "Authorization": SQS_AUTH},
    )
    resp = conn.getresponse()
    body = resp.read()
    conn.close()

    assert resp.status == 200
    assert b"ListQueuesResponse" in body
    assert proxy.counts() == {"sqs.ListQueues": 1}


def test_query_protocol_faults_answer_in_xml(proxy: AwsProxy) -> None:
    proxy.throttle("sqs.ListQueues")
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    conn.request(
        "POST",
        "/",
        body="Action=ListQueues&Version=2012-11-05",
        headers={"Content-Type": "application/x-www-form-urlencoded", "Authorization": SQS_AUTH},
    )
    resp = conn.getresponse()
    body = resp.read()
    conn.close()

    assert resp.status == 400
    assert b"<Code>ThrottlingException</Code>" in body


def test_client_connection_is_kept_alive_across_requests(proxy: AwsProxy) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    sockets = []
    for _ in range(3):
        conn.request(
            "POST",
            "/",
            body="{}",
            headers={
                "Content-Type": "application/x-amz-json-1.1",
                "X-Amz-Target": "Logs_20140328.DescribeLogGroups",
                "Authorization": SQS_AUTH.replace("/sqs/", "/logs/"),
            },
        )
        resp = conn.getresponse()
        assert resp.status == 200
        assert "logGroups" in json.loads(resp.read())
        sockets.append(conn.sock)
    conn.close()

    assert sockets[0] is not None
    assert all(sock is sockets[0] for sock in sockets)
    assert proxy.counts() == {"logs.DescribeLogGroups": 3}


def test_parallel_clients_are_counted_exactly(
    proxy: AwsProxy, stream: tuple[str, str], moto_url: str
) -> None:
    group, name = stream
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        client = make_client("logs", proxy.url)
        try:
            for n in range(20):
                client.put_log_events(
                    logGroupName=group,
                    logStreamName=name,
                    logEvents=[{"timestamp": now_ms(), "message": f"{index}-{n}"}],
                )
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert errors == []
    assert proxy.counts() == {"logs.PutLogEvents": 120}
    assert len(stored_messages(moto_url, group, name)) == 120


# --- PutLogEvents validation ---------------------------------------------------------------


def test_clean_batch_at_the_exact_limits_records_no_violation(
    proxy: AwsProxy, logs: Any, stream: tuple[str, str], moto_url: str
) -> None:
    group, name = stream
    start = now_ms() - 23 * HOUR_MS
    events: list[dict[str, Any]] = [{"timestamp": start + i, "message": "x"} for i in range(9_998)]
    used = sum(len(e["message"]) + 26 for e in events)
    # two large events fill the batch to exactly 1,048,576 bytes; the span is just under 24 h
    remaining = MAX_BATCH_BYTES - used - 2 * 26
    events.append({"timestamp": start + 10_000, "message": "a" * (remaining // 2)})
    events.append(
        {"timestamp": start + 24 * HOUR_MS, "message": "b" * (remaining - remaining // 2)}
    )
    assert sum(len(e["message"]) + 26 for e in events) == MAX_BATCH_BYTES
    assert len(events) == 10_000

    logs.put_log_events(logGroupName=group, logStreamName=name, logEvents=events)

    assert proxy.violations() == []
    assert proxy.violation_count() == 0
    assert len(stored_messages(moto_url, group, name)) == 10_000


def _oversize_batch(ts: int) -> list[dict[str, Any]]:
    half = (MAX_BATCH_BYTES - 2 * 26) // 2
    return [
        {"timestamp": ts, "message": "a" * half},
        {"timestamp": ts, "message": "b" * (half + 1)},
    ]


@pytest.mark.parametrize(
    ("kind", "group", "stream_name", "make_events"),
    [
        ("batch_too_large", None, None, _oversize_batch),
        (
            "too_many_events",
            None,
            None,
            lambda ts: [{"timestamp": ts, "message": "m"}] * 10_001,
        ),
        (
            "unordered",
            None,
            None,
            lambda ts: [{"timestamp": ts, "message": "b"}, {"timestamp": ts - 1, "message": "a"}],
        ),
        (
            "span_too_long",
            None,
            None,
            lambda ts: [
                {"timestamp": ts - 24 * HOUR_MS - 1, "message": "old"},
                {"timestamp": ts, "message": "new"},
            ],
        ),
        ("bad_group_name", "bad group!", "s", lambda ts: [{"timestamp": ts, "message": "m"}]),
        ("bad_group_name", "aws/reserved", "s", lambda ts: [{"timestamp": ts, "message": "m"}]),
        ("bad_group_name", "g" * 513, "s", lambda ts: [{"timestamp": ts, "message": "m"}]),
        ("bad_stream_name", "good-group", "a:b", lambda ts: [{"timestamp": ts, "message": "m"}]),
        ("bad_stream_name", "good-group", "a*b", lambda ts: [{"timestamp": ts, "message": "m"}]),
    ],
    ids=[
        "oversize-batch",
        "10001-events",
        "unordered",
        "span-over-24h",
        "group-bad-chars",
        "group-aws-prefix",
        "group-too-long",
        "stream-colon",
        "stream-star",
    ],
)
def test_each_violation_kind_is_detected(
    proxy: AwsProxy,
    logs: Any,
    stream: tuple[str, str],
    kind: str,
    group: str | None,
    stream_name: str | None,
    make_events: Any,
) -> None:
    target_group = group or stream[0]
    target_stream = stream_name or stream[1]
    # moto refuses some of these (unknown group, unordered); the proxy's check is what counts
    with contextlib.suppress(ClientError):
        logs.put_log_events(
            logGroupName=target_group, logStreamName=target_stream, logEvents=make_events(now_ms())
        )

    assert proxy.violation_kinds() == {kind: 1}
    (violation,) = proxy.violations()
    assert violation.startswith(f"{kind}: ")
    assert proxy.violation_count() == 1
    assert proxy.counts() == {"logs.PutLogEvents": 1}


def test_oversize_batch_is_accepted_by_moto_but_flagged(
    proxy: AwsProxy, logs: Any, stream: tuple[str, str], moto_url: str
) -> None:
    group, name = stream
    logs.put_log_events(logGroupName=group, logStreamName=name, logEvents=_oversize_batch(now_ms()))

    assert len(stored_messages(moto_url, group, name)) == 2  # why the proxy exists
    assert proxy.violation_kinds() == {"batch_too_large": 1}
    assert "1048577 bytes" in proxy.violations()[0]


def test_per_event_limit_is_configurable(
    proxy: AwsProxy, logs: Any, stream: tuple[str, str]
) -> None:
    group, name = stream
    at_limit = [{"timestamp": now_ms(), "message": "x" * (LEGACY_MAX_EVENT_BYTES - 26)}]
    over = [{"timestamp": now_ms(), "message": "x" * (LEGACY_MAX_EVENT_BYTES - 25)}]

    logs.put_log_events(logGroupName=group, logStreamName=name, logEvents=over)
    assert proxy.violation_count() == 0  # the default limit is 1 MiB per event

    proxy.set_max_event_bytes(LEGACY_MAX_EVENT_BYTES)
    logs.put_log_events(logGroupName=group, logStreamName=name, logEvents=at_limit)
    assert proxy.violation_count() == 0
    logs.put_log_events(logGroupName=group, logStreamName=name, logEvents=over)
    assert proxy.violation_kinds() == {"event_too_large": 1}


def test_empty_batch_and_empty_message_are_detected(
    proxy: AwsProxy, stream: tuple[str, str]
) -> None:
    group, name = stream
    target = "Logs_20140328.PutLogEvents"
    raw_post(proxy, target, {"logGroupName": group, "logStreamName": name, "logEvents": []})
    raw_post(
        proxy,
        target,
        {
            "logGroupName": group,
            "logStreamName": name,
            "logEvents": [{"timestamp": now_ms(), "message": ""}],
        },
    )
    raw_post(proxy, target, {"logGroupName": "", "logStreamName": name, "logEvents": "nope"})

    assert proxy.violation_kinds() == {
        "empty_batch": 1,
        "empty_message": 1,
        "bad_group_name": 1,
        "malformed": 1,
    }
    assert proxy.counts() == {"logs.PutLogEvents": 3}


def test_reject_violations_answers_invalid_parameter_without_forwarding(
    moto_url: str, stream: tuple[str, str]
) -> None:
    group, name = stream
    with AwsProxy(moto_url, reject_violations=True) as strict_proxy:
        client = make_client("logs", strict_proxy.url)
        events = [
            {"timestamp": now_ms() - 25 * HOUR_MS, "message": "old"},
            {"timestamp": now_ms(), "message": "new"},
        ]
        with pytest.raises(ClientError) as caught:
            client.put_log_events(logGroupName=group, logStreamName=name, logEvents=events)

        assert caught.value.response["Error"]["Code"] == "InvalidParameterException"
        assert "span_too_long" in caught.value.response["Error"]["Message"]
        assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
        assert strict_proxy.injected()["rejected_invalid"] == 1
    assert stored_messages(moto_url, group, name) == []


def test_strict_checks_can_be_switched_off(
    proxy: AwsProxy, logs: Any, stream: tuple[str, str]
) -> None:
    group, name = stream
    proxy.set_strict(False)
    logs.put_log_events(logGroupName=group, logStreamName=name, logEvents=_oversize_batch(now_ms()))
    assert proxy.violation_count() == 0


def test_violation_list_is_bounded_but_counted(moto_url: str) -> None:
    with AwsProxy(moto_url, max_violations=3) as small:
        for i in range(5):
            status, _ = raw_post(
                small,
                "Logs_20140328.PutLogEvents",
                {
                    "logGroupName": f"aws/n{i}",
                    "logStreamName": "s",
                    "logEvents": [{"timestamp": now_ms(), "message": "m"}],
                },
            )
            assert status == 400  # moto: the group does not exist
        kept = small.violations()
        assert small.violation_count() == 5
        assert len(kept) == 3
        assert ["'aws/n2'" in kept[0], "'aws/n4'" in kept[2]] == [True, True]
        small.clear_violations()
        assert small.violations() == [] and small.violation_count() == 0


def test_validator_reports_malformed_input() -> None:
    assert validate_put_log_events(["not", "an", "object"]) == [
        "malformed: request body is not a JSON object"
    ]
    problems = validate_put_log_events(
        {
            "logGroupName": "g",
            "logStreamName": "s",
            "logEvents": [{"timestamp": "soon", "message": "m"}, {"message": "m"}],
        }
    )
    assert len(problems) == 1
    assert problems[0].startswith("malformed: 2 event(s)")


# --- fault injection -----------------------------------------------------------------------


def test_throttle_fraction_is_seeded_and_botocore_sees_throttling(
    moto_url: str, stream: tuple[str, str]
) -> None:
    group, name = stream
    outcomes: list[bool] = []  # True = throttled
    with AwsProxy(moto_url, seed=42) as seeded:
        rule = seeded.throttle("logs.PutLogEvents", 0.5)
        client = make_client("logs", seeded.url)
        for i in range(24):
            try:
                client.put_log_events(
                    logGroupName=group,
                    logStreamName=name,
                    logEvents=[{"timestamp": now_ms(), "message": f"m{i}"}],
                )
                outcomes.append(False)
            except ClientError as err:
                assert err.response["Error"]["Code"] == "ThrottlingException"
                assert err.response["Error"]["Message"] == "Rate exceeded"
                assert err.response["ResponseMetadata"]["HTTPStatusCode"] == 400
                outcomes.append(True)
        injected = seeded.injected()
        counts = seeded.counts()

    rng = random.Random(42)
    assert outcomes == [rng.random() < 0.5 for _ in range(24)]
    assert 0 < sum(outcomes) < 24
    assert injected["throttle"] == sum(outcomes) == rule.fired
    assert rule.seen == 24
    assert counts == {"logs.PutLogEvents": 24}
    assert len(stored_messages(moto_url, group, name)) == 24 - sum(outcomes)


def test_botocore_retries_a_throttled_put_and_succeeds(
    proxy: AwsProxy, stream: tuple[str, str], moto_url: str
) -> None:
    group, name = stream
    proxy.throttle("logs.PutLogEvents", first=1)
    client = make_client("logs", proxy.url, attempts=3)
    response = client.put_log_events(
        logGroupName=group, logStreamName=name, logEvents=[{"timestamp": now_ms(), "message": "m"}]
    )

    assert response["ResponseMetadata"]["RetryAttempts"] == 1
    assert proxy.counts() == {"logs.PutLogEvents": 2}
    assert proxy.injected()["throttle"] == 1
    assert stored_messages(moto_url, group, name) == ["m"]


@pytest.mark.parametrize(
    ("status", "code"), [(503, "ServiceUnavailableException"), (500, "InternalFailure")]
)
def test_server_errors_are_seen_by_botocore(
    proxy: AwsProxy, logs: Any, stream: tuple[str, str], status: int, code: str
) -> None:
    group, name = stream
    proxy.fail("logs.PutLogEvents", status=status, code=code)
    with pytest.raises(ClientError) as caught:
        logs.put_log_events(
            logGroupName=group,
            logStreamName=name,
            logEvents=[{"timestamp": now_ms(), "message": "m"}],
        )
    assert caught.value.response["Error"]["Code"] == code
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == status
    assert proxy.injected()["error"] == 1


def test_rules_apply_only_to_matching_actions_and_can_be_removed(
    proxy: AwsProxy, logs: Any, stream: tuple[str, str]
) -> None:
    group, name = stream
    rule = proxy.fail("sqs.*")
    sqs = make_client("sqs", proxy.url)
    with pytest.raises(ClientError) as caught:
        sqs.list_queues()
    assert caught.value.response["Error"]["Code"] == "ServiceUnavailableException"
    logs.put_log_events(
        logGroupName=group, logStreamName=name, logEvents=[{"timestamp": now_ms(), "message": "m"}]
    )

    proxy.remove_rule(rule)
    sqs.list_queues()
    assert rule.fired == 1
    assert proxy.rules() == []


def test_stall_holds_the_request_then_forwards_it(
    proxy: AwsProxy, logs: Any, stream: tuple[str, str], moto_url: str
) -> None:
    group, name = stream
    proxy.stall("logs.PutLogEvents", seconds=0.4, first=1)
    event = [{"timestamp": now_ms(), "message": "slow"}]

    started = time.monotonic()
    logs.put_log_events(logGroupName=group, logStreamName=name, logEvents=event)
    slow = time.monotonic() - started
    logs.put_log_events(logGroupName=group, logStreamName=name, logEvents=event)

    assert slow >= 0.4  # a lower bound: the stall happened (no upper-bound timing here)
    assert proxy.injected()["stall"] == 1  # and only once (first=1)
    assert stored_messages(moto_url, group, name) == ["slow", "slow"]


def test_stall_without_end_makes_the_client_time_out(
    proxy: AwsProxy, stream: tuple[str, str], moto_url: str
) -> None:
    group, name = stream
    proxy.stall("logs.PutLogEvents", first=1)
    client = make_client("logs", proxy.url, read_timeout=0.5)
    with pytest.raises(ReadTimeoutError):
        client.put_log_events(
            logGroupName=group,
            logStreamName=name,
            logEvents=[{"timestamp": now_ms(), "message": "lost"}],
        )
    client.put_log_events(
        logGroupName=group, logStreamName=name, logEvents=[{"timestamp": now_ms(), "message": "ok"}]
    )

    assert stored_messages(moto_url, group, name) == ["ok"]
    assert proxy.injected()["stall"] == 1


def test_down_refuses_connections_and_up_restores_them(
    proxy: AwsProxy, logs: Any, stream: tuple[str, str]
) -> None:
    group, name = stream
    event = [{"timestamp": now_ms(), "message": "m"}]
    logs.put_log_events(logGroupName=group, logStreamName=name, logEvents=event)
    port = proxy.port

    proxy.down()
    assert proxy.is_down
    with pytest.raises(EndpointConnectionError):
        logs.put_log_events(logGroupName=group, logStreamName=name, logEvents=event)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    assert proxy.injected()["dropped_connections"] >= 1  # boto3's kept-alive connection

    proxy.up()
    assert not proxy.is_down
    assert proxy.port == port
    logs.put_log_events(logGroupName=group, logStreamName=name, logEvents=event)
    assert proxy.counts() == {"logs.PutLogEvents": 2}


def test_upstream_unreachable_answers_502(stream: tuple[str, str]) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    with AwsProxy(f"http://127.0.0.1:{dead_port}", upstream_timeout=2) as orphan:
        client = make_client("logs", orphan.url)
        with pytest.raises(ClientError) as caught:
            client.describe_log_groups()
        assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 502
        assert orphan.injected()["upstream_error"] == 1


def test_stop_closes_the_listening_socket(moto_url: str) -> None:
    proxy = AwsProxy(moto_url).start()
    port = proxy.port
    assert port > 0
    assert proxy.url == f"http://127.0.0.1:{port}"
    proxy.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


# --- sequence tokens -------------------------------------------------------------------------


def test_sequence_token_dance(proxy: AwsProxy, logs: Any, stream: tuple[str, str]) -> None:
    group, name = stream
    proxy.set_sequence_tokens(True)
    event = [{"timestamp": now_ms(), "message": "m"}]

    # a fresh stream takes its first put without a token, and refuses one with a token
    with pytest.raises(ClientError) as caught:
        logs.put_log_events(
            logGroupName=group, logStreamName=name, logEvents=event, sequenceToken="123"
        )
    assert caught.value.response["Error"]["Code"] == "InvalidSequenceTokenException"
    assert caught.value.response["Error"]["Message"].endswith("sequenceToken is: null")
    assert "expectedSequenceToken" not in caught.value.response

    first = logs.put_log_events(logGroupName=group, logStreamName=name, logEvents=event)
    token1 = first["nextSequenceToken"]
    assert token1 == proxy.sequence_token(group, name)

    # without the token, or with a wrong one: refused, and botocore exposes the expected token
    for wrong in (None, "999"):
        kwargs = {} if wrong is None else {"sequenceToken": wrong}
        with pytest.raises(ClientError) as caught:
            logs.put_log_events(logGroupName=group, logStreamName=name, logEvents=event, **kwargs)
        response: dict[str, Any] = dict(caught.value.response)
        assert response["Error"]["Code"] == "InvalidSequenceTokenException"
        assert response["expectedSequenceToken"] == token1
        assert response["Error"]["Message"] == (
            f"The given sequenceToken is invalid. The next expected sequenceToken is: {token1}"
        )

    second = logs.put_log_events(
        logGroupName=group, logStreamName=name, logEvents=event, sequenceToken=token1
    )
    token2 = second["nextSequenceToken"]
    assert token2 != token1

    streams = logs.describe_log_streams(logGroupName=group)["logStreams"]
    assert [s.get("uploadSequenceToken") for s in streams] == [token2]
    # without data_already_accepted, a replayed token is just invalid
    with pytest.raises(ClientError) as caught:
        logs.put_log_events(
            logGroupName=group, logStreamName=name, logEvents=event, sequenceToken=token1
        )
    assert caught.value.response["Error"]["Code"] == "InvalidSequenceTokenException"

    assert proxy.injected()["invalid_sequence_token"] == 4
    assert proxy.sequence_token_usage() == {(group, name): 4}  # "123", "999", token1 twice


def test_data_already_accepted_on_replayed_token(
    proxy: AwsProxy, logs: Any, stream: tuple[str, str], moto_url: str
) -> None:
    group, name = stream
    proxy.set_sequence_tokens(True, data_already_accepted=True)
    event = [{"timestamp": now_ms(), "message": "once"}]
    token1 = logs.put_log_events(logGroupName=group, logStreamName=name, logEvents=event)[
        "nextSequenceToken"
    ]
    token2 = logs.put_log_events(
        logGroupName=group, logStreamName=name, logEvents=event, sequenceToken=token1
    )["nextSequenceToken"]

    with pytest.raises(ClientError) as caught:
        logs.put_log_events(
            logGroupName=group, logStreamName=name, logEvents=event, sequenceToken=token1
        )
    assert caught.value.response["Error"]["Code"] == "DataAlreadyAcceptedException"
    assert dict(caught.value.response)["expectedSequenceToken"] == token2
    assert proxy.injected()["data_already_accepted"] == 1
    assert stored_messages(moto_url, group, name) == ["once", "once"]


def test_failed_upstream_put_does_not_advance_the_token(
    proxy: AwsProxy, logs: Any, moto_url: str
) -> None:
    group = f"/cloudlog/test/{uuid.uuid4().hex}"
    make_client("logs", moto_url).create_log_group(logGroupName=group)
    proxy.set_sequence_tokens(True)
    event = [{"timestamp": now_ms(), "message": "m"}]
    with pytest.raises(ClientError) as caught:  # the stream does not exist on moto
        logs.put_log_events(logGroupName=group, logStreamName="missing", logEvents=event)
    assert caught.value.response["Error"]["Code"] == "ResourceNotFoundException"
    assert proxy.sequence_token(group, "missing") is None

    logs.create_log_stream(logGroupName=group, logStreamName="missing")
    response = logs.put_log_events(logGroupName=group, logStreamName="missing", logEvents=event)
    assert response["nextSequenceToken"] == proxy.sequence_token(group, "missing")


# --- command line ----------------------------------------------------------------------------


def test_cli_serves_and_prints_counts_on_sigterm(moto_url: str, stream: tuple[str, str]) -> None:
    group, name = stream
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    cmd = [sys.executable, "-m", "cloudlog_devtools.awsproxy", "--upstream", moto_url]
    process = subprocess.Popen(
        [*cmd, "--port", "0", "--throttle", "1.0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO_ROOT,
    )
    try:
        assert process.stdout is not None
        banner = process.stdout.readline()
        assert banner.startswith("awsproxy listening on http://127.0.0.1:")
        url = banner.split()[3]
        client = make_client("logs", url)
        with pytest.raises(ClientError) as caught:
            client.put_log_events(
                logGroupName=group,
                logStreamName=name,
                logEvents=[{"timestamp": now_ms(), "message": "m"}],
            )
        assert caught.value.response["Error"]["Code"] == "ThrottlingException"
        client.describe_log_groups()
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    assert process.returncode == 0
    report = json.loads(out)
    assert report["counts"] == {"logs.PutLogEvents": 1, "logs.DescribeLogGroups": 1}
    assert report["total"] == 2
    assert report["injected"]["throttle"] == 1
