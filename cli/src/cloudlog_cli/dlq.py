"""``cloudlog dlq``: see what was dead-lettered and send it back through the pipeline.

Dead-lettered messages are Celery task messages as kombu's SQS transport wrote them: a JSON
envelope (base64 of it under kombu's default encoding) whose ``body`` is base64 of
``[args, kwargs, embed]``; ``args[0]`` is the batch: encoded as ``kwargs["encoding"]`` says
(clients/flask_ext/payload.py), or, from publishers before that format, the list of events.
Replay re-sends the envelope as it is, whichever the form.
"""

from __future__ import annotations

import base64
import json
from dataclasses import asdict, dataclass
from typing import Any

from cloudlog_wire.broker import BrokerSettings
from cloudlog_wire.payload import PayloadError, task_events

# SQS: ReceiveMessage returns at most 10 messages (SQS API reference, MaxNumberOfMessages).
RECEIVE_BATCH = 10
# While listing, messages are hidden this long, then made visible again.
LIST_VISIBILITY_S = 30
# While replaying, a message is hidden this long; it is deleted once re-sent.
REPLAY_VISIBILITY_S = 60


@dataclass(frozen=True, slots=True)
class DeadLetter:
    message_id: str
    task_id: str | None
    task: str | None
    retries: int | None
    receive_count: int | None
    events: int
    streams: list[str]
    first_timestamp: int | None
    last_timestamp: int | None
    # Why the batch could not be read (corrupt, unknown encoding); None when it could.
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def decode_envelope(sqs_body: str) -> dict[str, Any]:
    """The kombu envelope: plain JSON (cloudlog's setting), or base64 of it (kombu's default)."""
    text = sqs_body if sqs_body.lstrip().startswith("{") else base64.b64decode(sqs_body).decode()
    envelope: dict[str, Any] = json.loads(text)
    return envelope


def encode_envelope(envelope: dict[str, Any]) -> str:
    """As cloudlog's publisher writes it (``sqs_base64_encoding: False``)."""
    return json.dumps(envelope)


def batch_of(envelope: dict[str, Any]) -> list[dict[str, Any]]:
    body = envelope["body"]
    if envelope.get("properties", {}).get("body_encoding") == "base64":
        body = base64.b64decode(body)
    args, kwargs, _embed = json.loads(body)
    if not args:
        return []
    return task_events(args[0], (kwargs or {}).get("encoding"))


def describe(message: dict[str, Any]) -> DeadLetter:
    envelope = decode_envelope(message["Body"])
    headers = envelope.get("headers", {})
    error = None
    try:
        events = batch_of(envelope)
    except (PayloadError, ValueError, TypeError) as exc:
        events, error = [], str(exc)
    timestamps = [event["timestamp"] for event in events if "timestamp" in event]
    streams = sorted({f"{e.get('log_group')}/{e.get('log_stream')}" for e in events})
    receive_count = message.get("Attributes", {}).get("ApproximateReceiveCount")
    return DeadLetter(
        message_id=message["MessageId"],
        task_id=headers.get("id"),
        task=headers.get("task"),
        retries=headers.get("retries"),
        receive_count=int(receive_count) if receive_count else None,
        events=len(events),
        streams=streams,
        first_timestamp=min(timestamps) if timestamps else None,
        last_timestamp=max(timestamps) if timestamps else None,
        error=error,
    )


def _queue_url(sqs: Any, name: str) -> str:
    url: str = sqs.get_queue_url(QueueName=name)["QueueUrl"]
    return url


def _receive(sqs: Any, queue_url: str, visibility: int) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = sqs.receive_message(
        QueueUrl=queue_url,
        MaxNumberOfMessages=RECEIVE_BATCH,
        VisibilityTimeout=visibility,
        WaitTimeSeconds=0,
        AttributeNames=["ApproximateReceiveCount"],
    ).get("Messages", [])
    return messages


def list_dead_letters(sqs: Any, broker: BrokerSettings, limit: int) -> list[DeadLetter]:
    """Up to ``limit`` dead-lettered batches; they stay in the dead-letter queue."""
    url = _queue_url(sqs, broker.dead_letter_queue_name)
    seen: dict[str, dict[str, Any]] = {}
    while len(seen) < limit:
        messages = [m for m in _receive(sqs, url, LIST_VISIBILITY_S) if m["MessageId"] not in seen]
        if not messages:
            break
        for message in messages:
            seen[message["MessageId"]] = message
    for message in seen.values():  # visible again at once
        sqs.change_message_visibility(
            QueueUrl=url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
        )
    return [describe(message) for message in list(seen.values())[:limit]]


def replay(sqs: Any, broker: BrokerSettings, limit: int) -> int:
    """Move up to ``limit`` messages back to the main queue with a fresh retry budget.

    Each message is deleted from the dead-letter queue only after it was sent to the queue.
    """
    dlq_url = _queue_url(sqs, broker.dead_letter_queue_name)
    queue_url = _queue_url(sqs, broker.queue_name)
    moved = 0
    while moved < limit:
        messages = _receive(sqs, dlq_url, REPLAY_VISIBILITY_S)[: limit - moved]
        if not messages:
            break
        for message in messages:
            envelope = decode_envelope(message["Body"])
            envelope.setdefault("headers", {})["retries"] = 0
            sqs.send_message(QueueUrl=queue_url, MessageBody=encode_envelope(envelope))
            sqs.delete_message(QueueUrl=dlq_url, ReceiptHandle=message["ReceiptHandle"])
            moved += 1
    return moved
