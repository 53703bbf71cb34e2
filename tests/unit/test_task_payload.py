"""The task payload: round trips, and tasks as SQS really receives them (moto on loopback)."""

from __future__ import annotations

import base64
import json
import random
import string
import uuid
import zlib
from typing import Any

import boto3
import pytest

from cloudlog_cli.dlq import batch_of, decode_envelope, describe, for_replay, task_body
from cloudlog_core.aws import LOCAL_ENDPOINT_CREDENTIALS, AwsSettings
from cloudlog_wire.broker import BrokerSettings
from cloudlog_wire.payload import (
    MAX_DECOMPRESSED_BYTES,
    MAX_TASK_EVENTS,
    PLAIN_JSON,
    ZLIB_BASE64,
    PayloadError,
    PayloadTooLarge,
    TaskCompression,
    count_events,
    decode_events_json,
    encode,
    events_json,
    parse_events_json,
    task_events,
)
from cloudlog_worker.tasks import request_body
from flask_cloudlog.buffer import EventBuffer
from flask_cloudlog.dispatcher import TASK_ENVELOPE_BYTES, Dispatcher
from flask_cloudlog.publisher import CeleryPublisher

API_KEY = "tenant-key-" + "s" * 40


def event(n: int, message: str, **fields: Any) -> dict[str, Any]:
    made: dict[str, Any] = {
        "event_id": f"ev{n}",
        "timestamp": 1_700_000_000_000 + n,
        "log_group": "shop",
        "log_stream": f"web-{n % 3}",
        "message": message,
        "level": "info",
        "logger": None,
    }
    if fields:
        made["fields"] = fields
    return made


def incompressible(rng: random.Random, length: int) -> str:
    return "".join(rng.choice(string.printable + "ßπ🚀") for _ in range(length))


SAMPLES = {
    "unicode": [event(1, 'ünïcödé 🚀 \u2028 \x00 "quoted" \\ back', path="/ü")],
    "empty fields": [event(2, "m"), {**event(3, "n"), "fields": {}}, event(4, "", a="")],
    "incompressible": [event(n, incompressible(random.Random(n), 5_000)) for n in range(5)],
    "nothing": [],
}


@pytest.mark.parametrize("compression", list(TaskCompression))
@pytest.mark.parametrize("name", list(SAMPLES))
def test_round_trip(compression: TaskCompression, name: str) -> None:
    events = SAMPLES[name]
    data, encoding = encode(events_json(events), compression)
    assert encoding == (ZLIB_BASE64 if compression is TaskCompression.ZLIB else PLAIN_JSON)
    assert json.loads(decode_events_json(data, encoding)) == events
    assert task_events(data, encoding) == events
    body, count = request_body(data, encoding, len(events))
    assert json.loads(body) == {"events": events} and count == len(events)


def test_a_lone_surrogate_does_not_stop_its_batch() -> None:
    """Not UTF-8-encodable: the batch goes as ASCII-escaped JSON, every event in it intact."""
    events = [event(1, "before"), event(2, "bad \udcff byte"), event(3, "after")]
    raw = events_json(events)
    assert raw.isascii() and b"\\udcff" in raw
    assert json.loads(raw) == events
    data, encoding = encode(raw, TaskCompression.ZLIB)
    assert task_events(data, encoding) == events


def test_a_list_form_batch_is_refused_as_a_payload_error() -> None:
    # Only the encoded form was ever published: a list argument is a corrupt or foreign task.
    events = SAMPLES["unicode"]
    with pytest.raises(PayloadError):
        task_events(events, None)
    with pytest.raises(PayloadError):
        request_body(events, None, None)


def test_a_count_missing_from_the_task_is_read_from_the_events() -> None:
    data, encoding = encode(events_json(SAMPLES["empty fields"]), TaskCompression.ZLIB)
    assert request_body(data, encoding, None)[1] == 3


@pytest.mark.parametrize("raw", [b"{not json", b'{"events": []}', b"\xff\xfe"])
def test_a_batch_that_is_not_a_list_of_events_is_a_payload_error(raw: bytes) -> None:
    """Without a count in the task the events are counted, and a batch that cannot be is left
    to the dead-letter queue like any undecodable one (PayloadError), not raised as it comes."""
    data, encoding = encode(raw, TaskCompression.ZLIB)
    with pytest.raises(PayloadError):
        request_body(data, encoding, None)
    with pytest.raises(PayloadError):
        task_events(data, encoding)


def test_decompression_is_bounded() -> None:
    import zlib

    bomb = base64.b64encode(zlib.compress(b"[" + b" " * (MAX_DECOMPRESSED_BYTES + 10) + b"]"))
    with pytest.raises(PayloadError, match="more than"):
        decode_events_json(bomb.decode(), ZLIB_BASE64)


@pytest.fixture
def sqs_queue(moto_url: str) -> tuple[Any, BrokerSettings, AwsSettings, str]:
    """A queue of its own whose MaximumMessageSize is the smallest task cloudlog allows."""
    key, secret = LOCAL_ENDPOINT_CREDENTIALS
    sqs = boto3.client(
        "sqs",
        endpoint_url=moto_url,
        region_name="us-east-1",
        aws_access_key_id=key,
        aws_secret_access_key=secret,
    )
    name = f"payload-{uuid.uuid4().hex[:8]}"
    url = sqs.create_queue(QueueName=name, Attributes={"MaximumMessageSize": "16384"})["QueueUrl"]
    broker = BrokerSettings(queue_name=name, dead_letter_queue_name=name + "-dlq")
    return sqs, broker, AwsSettings(aws_endpoint_url=moto_url), url


def receive_all(sqs: Any, url: str) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    while True:
        page = sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=300, WaitTimeSeconds=0
        ).get("Messages", [])
        if not page:
            return messages
        messages.extend(page)


@pytest.mark.parametrize("compression", list(TaskCompression))
def test_tasks_fit_the_queue_exactly_as_sqs_receives_them(
    sqs_queue: tuple[Any, BrokerSettings, AwsSettings, str], compression: TaskCompression
) -> None:
    """Incompressible events through the real publisher into a 16 KiB queue: every task fits
    on the first try (no "Message must be shorter" halving), and the envelope around the body,
    which the dispatcher bounds rather than computes, stays within TASK_ENVELOPE_BYTES."""
    sqs, broker, aws, url = sqs_queue
    rng = random.Random(5)
    events = [event(n, incompressible(rng, rng.randrange(10, 3_000))) for n in range(120)]
    events.append(event(999, incompressible(rng, 40_000)))  # split into parts
    buffer = EventBuffer(max_events=10_000, max_bytes=10**9)
    publisher = CeleryPublisher(broker, aws, API_KEY)
    dispatcher = Dispatcher(
        buffer,
        publisher,
        batch_max_events=1_000,
        max_task_bytes=16_384,
        flush_interval=60,
        publish_retry_max_seconds=0.1,
        compression=compression,
        api_key=API_KEY,
    )
    for item in events:
        buffer.put(item, wake_at=10_000)
    assert dispatcher.close(timeout=30)
    assert dispatcher.publish_failures == 0
    messages = receive_all(sqs, url)
    assert len(messages) == dispatcher.published_tasks > 5
    received: list[dict[str, Any]] = []
    largest = 0
    for message in messages:
        raw = message["Body"]
        assert len(raw.encode()) <= 16_384
        envelope = decode_envelope(raw)
        assert len(raw) - len(envelope["body"]) <= TASK_ENVELOPE_BYTES
        largest = max(largest, len(raw))
        headers = envelope["headers"]
        assert API_KEY not in headers["kwargsrepr"] and "***" in headers["kwargsrepr"]
        assert len(headers["argsrepr"]) < 64  # a count, never the payload
        received.extend(batch_of(envelope))
    assert largest > 16_384 - TASK_ENVELOPE_BYTES, "tasks are filled, not sized by guesswork"
    order = {e["event_id"]: n for n, e in enumerate(received)}
    assert sorted(order, key=order.__getitem__) == [e["event_id"] for e in received]
    whole = [e for e in received if "cloudlog_part" not in e.get("fields", {})]
    assert whole == events[:-1]
    parts = [e for e in received if "cloudlog_part" in e.get("fields", {})]
    assert "".join(p["message"] for p in parts) == events[-1]["message"]


def sqs_message(args: list[Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """A dead-lettered message as kombu writes it, with a task body of (args, kwargs)."""
    body = json.dumps([args, kwargs, {"callbacks": None}])
    envelope = {
        "body": base64.b64encode(body.encode()).decode(),
        "headers": {"id": "t1", "task": "cloudlog.deliver_batch", "retries": 3},
        "properties": {"body_encoding": "base64"},
    }
    return {
        "MessageId": "m1",
        "Body": json.dumps(envelope),
        "Attributes": {"ApproximateReceiveCount": "4"},
    }


@pytest.mark.parametrize("form", ["zlib", "json"])
def test_dlq_describes_both_encodings(form: str) -> None:
    events = [event(n, f"line {n}") for n in range(5)]
    data, encoding = encode(events_json(events), TaskCompression(form.replace("json", "none")))
    message = sqs_message([data], {"encoding": encoding, "event_count": 5})
    letter = describe(message)
    assert letter.events == 5 and letter.error is None
    assert letter.streams == ["shop/web-0", "shop/web-1", "shop/web-2"]
    assert (letter.first_timestamp, letter.last_timestamp) == (
        1_700_000_000_000,
        1_700_000_000_004,
    )
    assert (letter.task_id, letter.receive_count) == ("t1", 4)


def test_dlq_lists_an_undecodable_batch_instead_of_failing() -> None:
    letter = describe(sqs_message(["not base64!"], {"encoding": ZLIB_BASE64, "event_count": 9}))
    assert letter.events == 0 and letter.error and "corrupt" in letter.error


def dead_lettered(kwargs: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    """A message the worker dead-lettered: the task as it was, its cause in a header."""
    data, _ = encode(events_json([event(n, f"line {n}") for n in range(3)]), TaskCompression.ZLIB)
    message = sqs_message([data], {"encoding": ZLIB_BASE64, "event_count": 3, **kwargs})
    envelope = json.loads(message["Body"])
    envelope["headers"]["cloudlog_dead_letter"] = record
    envelope["headers"]["kwargsrepr"] = "{'api_key': '***'}"
    return {**message, "Body": json.dumps(envelope)}


KEY = "cl_" + "x" * 43


def test_dlq_shows_the_cause_the_worker_recorded_and_never_the_key() -> None:
    record = {
        "cause": "http_401",
        "status": 401,
        "detail": f"ingest answered 401: unknown key {KEY}",
        "retries": 0,
        "at": 1_700_000_000_000,
        "key": "task",
    }
    letter = describe(dead_lettered({"api_key": KEY}, record))
    assert (letter.cause, letter.status, letter.key, letter.events) == ("http_401", 401, "task", 3)
    assert letter.dead_lettered_at == 1_700_000_000_000
    assert KEY not in json.dumps(letter.as_dict())


def test_dlq_shows_a_message_moved_by_the_redrive_policy_as_such() -> None:
    events = [event(0, "x")]
    data, encoding = encode(events_json(events), TaskCompression.ZLIB)
    letter = describe(sqs_message([data], {"encoding": encoding, "event_count": 1}))
    assert letter.cause == "redrive" and letter.status is None


@pytest.mark.parametrize(
    ("cause", "mode", "key_kept"),
    [
        ("http_401", "keep", True),
        ("retries_exhausted", "keep", True),
        ("retries_exhausted", "worker", False),
        ("http_401", "worker", False),
    ],
)
def test_replay_keeps_each_batchs_key_unless_told_to_use_the_workers(
    cause: str, mode: str, key_kept: bool
) -> None:
    message = dead_lettered({"api_key": KEY}, {"cause": cause})
    envelope = for_replay(decode_envelope(message["Body"]), mode)
    headers = envelope["headers"]
    assert "cloudlog_dead_letter" not in headers and headers["retries"] == 0
    assert KEY not in headers["kwargsrepr"]
    args, kwargs, _ = task_body(envelope)
    assert ("api_key" in kwargs) is key_kept
    assert task_events(args[0], kwargs["encoding"])[0]["message"] == "line 0"


def test_dlq_reads_a_decompression_bomb_bounded() -> None:
    """An 87 KB task of ``[{},{},...]`` once expanded to 22 million events and 1.76 GB."""
    raw = b"[" + b"{}," * 22_000_000 + b"{}]"
    bomb = base64.b64encode(zlib.compress(raw, 9)).decode()
    del raw
    letter = describe(sqs_message([bomb], {"encoding": ZLIB_BASE64}))
    assert letter.events == 0 and letter.error and "more than" in letter.error
    small = base64.b64encode(zlib.compress(b"[" + b"{}," * 10_000 + b"{}]")).decode()
    letter = describe(sqs_message([small], {"encoding": ZLIB_BASE64}))
    assert letter.error == f"batch of more than {MAX_TASK_EVENTS} events"


def test_events_are_counted_and_parsed_element_by_element_within_the_bound() -> None:
    assert count_events(b' [ {"a": 1} , 2 , [3] ] ') == 3
    assert parse_events_json(b"[]") == []
    for bad in (b"{}", b"[1,", b"[1]x", b"[1 2]", b"\xff"):
        with pytest.raises(PayloadError):
            parse_events_json(bad)
    with pytest.raises(PayloadTooLarge):
        count_events(b"[" + b"0," * 5 + b"0]", limit=5)
    assert count_events(b"[" + b"0," * 4 + b"0]", limit=5) == 5


def test_replay_has_no_mode_that_picks_another_tenants_key_by_itself() -> None:
    # A 401 batch re-sent with the worker's key would be written as the worker's tenant.
    message = dead_lettered({"api_key": KEY}, {"cause": "http_401"})
    envelope = for_replay(decode_envelope(message["Body"]))
    assert task_body(envelope)[1]["api_key"] == KEY
    with pytest.raises(ValueError):
        for_replay(decode_envelope(message["Body"]), "auto")
