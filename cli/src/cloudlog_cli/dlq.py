"""``cloudlog dlq``: see what was dead-lettered and send it back through the pipeline.

Dead-lettered messages are Celery task messages as kombu's SQS transport wrote them: a JSON
envelope (base64 of it under kombu's default encoding) whose ``body`` is base64 of
``[args, kwargs, embed]``; ``args[0]`` is the batch: encoded as ``kwargs["encoding"]`` says
(cloudlog_wire/payload.py). Replay re-sends the envelope as it is.

The worker dead-letters a batch itself, with its cause in the ``cloudlog_dead_letter`` header
(``cause``, ``status``, ``detail``, ``retries``, ``at``, ``key``: see cloudlog_worker/tasks.py);
a message the queue's redrive policy moved there (a worker killed again and again, a batch the
worker could not send) has no such header: its cause shows as ``redrive``. Reading a batch is
bounded as in the worker (payload.py: 16 MiB, 10,000 events); nothing printed carries a key.

Which key a replayed batch carries (``--key``): ``keep`` (default) keeps each batch's own key,
so a batch is only ever written as the tenant whose key sent it (a batch refused with 401 is
refused again, and comes back here with its cause); ``worker`` drops every batch's key, so the
worker's own ``CLOUDLOG_API_KEY`` applies: only for batches that belong to the worker's tenant
(a single-tenant deployment, or an app that sent a wrong key of that tenant), since the lines
are then written under that tenant's prefix.
"""

from __future__ import annotations

import base64
import json
from dataclasses import asdict, dataclass
from typing import Any

from cloudlog_wire.broker import BrokerSettings
from cloudlog_wire.payload import PayloadError, redact, task_events, task_kwargsrepr

# The header the worker writes on a batch it dead-letters (cloudlog_worker.tasks).
DEAD_LETTER_HEADER = "cloudlog_dead_letter"
# The cause shown for a message without it: moved by the queue's redrive policy.
REDRIVE_CAUSE = "redrive"
KEY_MODES = ("keep", "worker")

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
    # Why the worker dead-lettered it (``http_401``, ``oversized``, ...; ``redrive``: no cause
    # recorded), ingest's status and the worker's detail, when it told.
    cause: str = REDRIVE_CAUSE
    status: int | None = None
    detail: str | None = None
    dead_lettered_at: int | None = None
    # Which key the batch was sent with: "task" (its own), "worker", "none"; never the key.
    key: str | None = None
    # Why the batch could not be read (corrupt, unknown encoding, too large); None when it could.
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


def task_body(envelope: dict[str, Any]) -> tuple[list[Any], dict[str, Any], Any]:
    """``(args, kwargs, embed)`` of a Celery task message."""
    body = envelope["body"]
    if envelope.get("properties", {}).get("body_encoding") == "base64":
        body = base64.b64decode(body)
    args, kwargs, embed = json.loads(body)
    return list(args or []), dict(kwargs or {}), embed


def set_task_body(
    envelope: dict[str, Any], args: list[Any], kwargs: dict[str, Any], embed: Any
) -> None:
    body = json.dumps([args, kwargs, embed])
    if envelope.get("properties", {}).get("body_encoding") == "base64":
        envelope["body"] = base64.b64encode(body.encode()).decode()
    else:
        envelope["body"] = body


def batch_of(envelope: dict[str, Any]) -> list[dict[str, Any]]:
    args, kwargs, _embed = task_body(envelope)
    if not args:
        return []
    return task_events(args[0], kwargs.get("encoding"))


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def describe(message: dict[str, Any]) -> DeadLetter:
    envelope = decode_envelope(message["Body"])
    headers = envelope.get("headers") or {}
    record = headers.get(DEAD_LETTER_HEADER)
    record = record if isinstance(record, dict) else {}
    error = None
    try:
        events = batch_of(envelope)
    except (PayloadError, ValueError, TypeError, KeyError) as exc:
        events, error = [], redact(str(exc))
    timestamps = [
        event["timestamp"]
        for event in events
        if isinstance(event, dict) and isinstance(event.get("timestamp"), int)
    ]
    streams = sorted(
        {f"{e.get('log_group')}/{e.get('log_stream')}" for e in events if isinstance(e, dict)}
    )
    receive_count = message.get("Attributes", {}).get("ApproximateReceiveCount")
    detail = record.get("detail")
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
        cause=str(record.get("cause") or REDRIVE_CAUSE),
        status=_int_or_none(record.get("status")),
        detail=redact(str(detail)) if detail is not None else None,
        dead_lettered_at=_int_or_none(record.get("at")),
        key=str(record["key"]) if record.get("key") else None,
        error=error,
    )


def for_replay(envelope: dict[str, Any], key_mode: str = "keep") -> dict[str, Any]:
    """The envelope to send back to the queue: a fresh retry budget, no dead-letter header,
    and the batch's own key dropped as ``key_mode`` says (see the module)."""
    if key_mode not in KEY_MODES:
        raise ValueError(f"key mode must be one of {KEY_MODES}")
    headers = envelope.setdefault("headers", {})
    headers.pop(DEAD_LETTER_HEADER, None)
    headers["retries"] = 0
    args, kwargs, embed = task_body(envelope)
    if key_mode == "worker" and "api_key" in kwargs:
        del kwargs["api_key"]
        set_task_body(envelope, args, kwargs, embed)
    headers["kwargsrepr"] = task_kwargsrepr(kwargs)
    return envelope


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


def replay(sqs: Any, broker: BrokerSettings, limit: int, key_mode: str = "keep") -> int:
    """Move up to ``limit`` messages back to the main queue with a fresh retry budget.

    Each message is deleted from the dead-letter queue only after it was sent to the queue.
    ``key_mode``: which key the replayed batches carry (see the module).
    """
    if key_mode not in KEY_MODES:
        raise ValueError(f"key mode must be one of {KEY_MODES}")
    dlq_url = _queue_url(sqs, broker.dead_letter_queue_name)
    queue_url = _queue_url(sqs, broker.queue_name)
    moved = 0
    while moved < limit:
        messages = _receive(sqs, dlq_url, REPLAY_VISIBILITY_S)[: limit - moved]
        if not messages:
            break
        for message in messages:
            envelope = for_replay(decode_envelope(message["Body"]), key_mode)
            sqs.send_message(QueueUrl=queue_url, MessageBody=encode_envelope(envelope))
            sqs.delete_message(QueueUrl=dlq_url, ReceiptHandle=message["ReceiptHandle"])
            moved += 1
    return moved
