"""The delivery task the queue consumers run: POST a batch to ingest; nothing leaves SQS unwritten.

The batch arrives as payload.py encodes it and goes to ingest as it was serialised: decoded and
decompressed, never parsed (only bounded: at most ``MAX_DECOMPRESSED_BYTES`` and
``MAX_TASK_EVENTS``, counted element by element when the task does not say).

A message is acknowledged (deleted from SQS) in exactly two cases:

* **delivered**: ingest answered 200 with its JSON, whose ``results`` has one entry per event of
  the batch, each ``written`` or ``rejected`` with a reason;
* **dead-lettered**: the worker has *first* sent the task, unchanged, to the dead-letter queue
  with its cause (a ``cloudlog_dead_letter`` message header: ``cause``, ``status``, ``detail``,
  ``retries``, ``at``, ``key``), and only *then* lets the original be acknowledged.

Everything else goes back to the queue: connection errors, 5xx, 408, 429 (honouring
``Retry-After``), a 2xx/3xx that is not ingest's full answer (a load balancer's maintenance page,
a ``results`` of the wrong length) are retried with capped, fully jittered exponential backoff
(``self.retry``: a copy is published, then the original acknowledged), up to
``CLOUDLOG_MAX_RETRIES``; then the batch is dead-lettered with cause ``retries_exhausted``.
Permanent answers are dead-lettered at once: 401, 403, 413, 422 (``http_<status>``), any other
4xx (``http_4xx``), an undecodable task (``undecodable``), one too large (``oversized``).
An unexpected exception is retried ``CLOUDLOG_MAX_EXCEPTION_RETRIES`` times, then dead-lettered
(``unexpected_error``).

Design: why a retry waits in SQS, not in the worker. Celery's ``countdown`` makes the copy an
ETA task: whichever worker receives it keeps it in memory, unacknowledged, until its time comes,
while its message must stay invisible all that while. A worker killed then would hold back
every such message until SQS's visibility timeout ran out, and the visibility timeout would
have to exceed the longest countdown. So the copy is published without an ETA and with SQS's
own per-message delay (``delay_seconds``, which cloudlog's kombu transport sends as
``DelaySeconds``, at most 900 s: ``CLOUDLOG_RETRY_BACKOFF_MAX`` is bounded by it); SQS keeps it
hidden for the countdown and any worker may take it afterwards. A message a worker holds is
kept invisible by the transport's visibility heartbeat (cloudlog_wire/sqs_transport.py) only
while its task runs, so the visibility timeout (30 s by default) bounds how long a dead
worker's messages wait.

Design: why the worker dead-letters itself rather than relying on SQS redrive. Rejecting with
requeue until ``maxReceiveCount`` records nothing: the dead-letter queue would hold the batch
but not why it is there (a revoked key? a 5xx storm? a bug?), and each "requeue" on kombu's SQS
transport re-publishes a copy whose receive count starts again. So the worker sends the message
body itself, the cause in a header that ``cloudlog dlq list`` prints, and acknowledges after the
send succeeded. A crash between the two leaves the batch in both queues: harmless, since replay
is idempotent on event ids (ingest's journal). If the send fails, the task rejects with requeue
and the message stays in SQS (the redrive policy remains the last resort, without a cause).

No exception escapes the task: with ``acks_late`` Celery acknowledges a failed task by default
(``task_acks_on_failure_or_timeout``), and with that setting off it rejects it without requeue,
which kombu's SQS transport turns into a delete. Either way the batch would be gone; so the task
catches everything itself (``acks_on_failure_or_timeout=False`` is set all the same).

The tenant key (``api_key``) never appears in a log line, metric, exception or header: the
retried and dead-lettered copies carry a masked ``kwargsrepr``, the dead-letter header says only
which key the batch used (``task``: its own; ``worker``: the worker's), and every text taken from
an answer is passed through ``redact``. The dead-lettered copy keeps its ``api_key`` argument, as
the original carried it, so that a replay after an outage delivers for the same tenant; for a 401
``cloudlog dlq replay`` drops it, so the worker's own ``CLOUDLOG_API_KEY`` applies.

Each outcome is counted in the worker's metrics (metrics.py) and logged once, without the key.
"""

from __future__ import annotations

import logging
import math
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from celery import Celery, Task
from celery.exceptions import Reject, Retry

from cloudlog_wire.broker import MAX_DELAY_SECONDS
from cloudlog_wire.celery_app import DELIVER_TASK_NAME
from cloudlog_wire.payload import (
    MAX_TASK_EVENTS,
    PayloadError,
    PayloadTooLarge,
    count_events,
    decode_events_json,
    post_body,
    redact,
    task_argsrepr,
    task_kwargsrepr,
)
from cloudlog_worker.metrics import (
    BAD_ANSWER,
    CONNECTION,
    EXCEPTION,
    HTTP_4XX,
    HTTP_401,
    HTTP_403,
    HTTP_413,
    HTTP_422,
    OVERSIZED,
    RETRIES_EXHAUSTED,
    SERVER_ERROR,
    THROTTLED,
    UNDECODABLE,
    UNEXPECTED,
    WorkerMetrics,
)
from cloudlog_worker.settings import WorkerSettings

logger = logging.getLogger(__name__)

BATCH_PATH = "/v1/logs"
# The message header under which a dead-lettered task carries its cause (cloudlog dlq reads it).
DEAD_LETTER_HEADER = "cloudlog_dead_letter"
# 4xx answers that are about timing, not about the batch: retried like a 5xx.
TRANSIENT_4XX = frozenset({408, 425, 429})
PERMANENT_CAUSES = {401: HTTP_401, 403: HTTP_403, 413: HTTP_413, 422: HTTP_422}
# How much of an answer's body a log line or dead-letter detail quotes.
DETAIL_CHARS = 300


class IngestUnavailable(Exception):
    """Ingest could not take the batch now (connection error, 5xx, 429, an unreadable answer)."""


@dataclass(frozen=True, slots=True)
class DeadLetterMessage:
    """A task to send to the dead-letter queue: the original arguments and why."""

    task_id: str | None
    args: list[Any]
    kwargs: dict[str, Any]
    retries: int
    header: dict[str, Any] = field(default_factory=dict)


DeadLetterSender = Callable[[DeadLetterMessage], None]


def celery_dead_letter_sender(app: Celery, queue: str) -> DeadLetterSender:
    """Publishes a dead letter as the same Celery task message, on ``queue``, with its cause."""

    def send(letter: DeadLetterMessage) -> None:
        app.send_task(
            DELIVER_TASK_NAME,
            args=letter.args,
            kwargs=letter.kwargs,
            queue=queue,
            task_id=letter.task_id,
            retries=letter.retries,
            headers={DEAD_LETTER_HEADER: letter.header},
            argsrepr=task_argsrepr(
                letter.args[0] if letter.args else None,
                letter.kwargs.get("encoding"),
                letter.kwargs.get("event_count"),
            ),
            kwargsrepr=task_kwargsrepr(letter.kwargs),
            retry=True,
            retry_policy={
                "max_retries": 3,
                "interval_start": 0.2,
                "interval_step": 0.5,
                "interval_max": 2.0,
            },
        )

    return send


class HttpClientHolder:
    """One keep-alive HTTP client per process (a client must not cross a fork)."""

    def __init__(self, settings: WorkerSettings) -> None:
        self._settings = settings
        self._client: httpx.Client | None = None
        self._pid = 0
        self._lock = threading.Lock()

    def get(self) -> httpx.Client:
        if self._client is None or self._pid != os.getpid():
            with self._lock:
                if self._client is None or self._pid != os.getpid():
                    headers = {"User-Agent": "cloudlog-worker"}
                    if self._settings.api_key:
                        headers["Authorization"] = f"Bearer {self._settings.api_key}"
                    self._client = httpx.Client(
                        base_url=self._settings.ingest_url,
                        headers=headers,
                        timeout=httpx.Timeout(
                            self._settings.http_read_timeout,
                            connect=self._settings.http_connect_timeout,
                        ),
                        limits=httpx.Limits(max_connections=self._settings.worker_concurrency * 2),
                    )
                    self._pid = os.getpid()
        return self._client


def delay_seconds(countdown: float) -> int:
    """A countdown as SQS's DelaySeconds: whole seconds, rounded up, 0..900."""
    return max(0, min(MAX_DELAY_SECONDS, math.ceil(countdown)))


def retry_countdown(retries: int, settings: WorkerSettings, retry_after: float | None) -> float:
    """Full-jitter exponential backoff, capped; never sooner than the server's Retry-After."""
    ceiling = min(settings.retry_backoff_max, settings.retry_backoff_base * 2 ** min(retries, 30))
    countdown = random.uniform(0, ceiling)
    if retry_after is not None:
        countdown = max(countdown, min(retry_after, settings.retry_backoff_max))
    return countdown


def release(response: httpx.Response) -> None:
    """Let reference counting free a response whose body has been read.

    httpx 0.28 links a response and its stream both ways (``BoundSyncStream._response``, see
    encode/httpx#3733), so the response, its request and the request's body (a whole batch, up
    to ``CLOUDLOG_MAX_BATCH_BYTES``) wait for a full garbage collection. In a worker holding
    ~130,000 long-lived objects those come seldom: under a steady 2,000 lines/s its memory grew
    by 6-10 MB a minute. The body is already read (``post`` does not stream), so the stream has
    nothing left to give; an empty one in its place breaks the cycle.
    """
    response.stream = httpx.ByteStream(b"")


def parse_retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def declared_count(event_count: object) -> int | None:
    """The task's own ``event_count``, if it is one."""
    if isinstance(event_count, int) and not isinstance(event_count, bool) and event_count >= 0:
        return event_count
    return None


def request_body(batch: object, encoding: str | None, event_count: int | None) -> tuple[bytes, int]:
    """The ``POST /v1/logs`` body for a task's batch, and its number of events.

    The batch is passed through: decoded and decompressed (at most ``MAX_DECOMPRESSED_BYTES``),
    never parsed; without a count of its own, its events are counted one element at a time,
    stopping past ``MAX_TASK_EVENTS``. ``PayloadTooLarge`` for a batch past either bound,
    ``PayloadError`` for one that cannot be read.
    """
    if not isinstance(batch, str):
        raise PayloadError(f"unexpected batch argument of type {type(batch).__name__}")
    declared = declared_count(event_count)
    if declared is not None and declared > MAX_TASK_EVENTS:
        raise PayloadTooLarge(f"batch of {declared} events, more than {MAX_TASK_EVENTS}")
    raw = decode_events_json(batch, encoding)
    count = declared if declared is not None else count_events(raw)
    return post_body(raw), count


@dataclass(frozen=True, slots=True)
class Delivered:
    written: int
    rejected: int
    reasons: Counter[str]


@dataclass(frozen=True, slots=True)
class Transient:
    cause: str  # one of RETRY_CAUSES
    detail: str
    status: int | None = None
    retry_after: float | None = None


@dataclass(frozen=True, slots=True)
class Permanent:
    cause: str  # one of DEAD_LETTER_CAUSES
    detail: str
    status: int | None = None


Outcome = Delivered | Transient | Permanent


def read_answer(response: httpx.Response, count: int) -> Delivered | Transient:
    """Ingest's 200 answer: one result per event, each written or rejected with a reason."""
    problem = None
    try:
        answer = response.json()
    except ValueError:
        answer = None
        problem = "answered 200 with a body that is not JSON"
    results = answer.get("results") if isinstance(answer, dict) else None
    if problem is None and not isinstance(results, list):
        problem = "answered 200 without a results list"
    elif problem is None and isinstance(results, list) and len(results) != count:
        problem = f"answered 200 with {len(results)} results for {count} events"
    if problem is not None or not isinstance(results, list):
        return Transient(BAD_ANSWER, f"ingest {problem}", status=200)
    written = 0
    reasons: Counter[str] = Counter()
    for result in results:
        status = result.get("status") if isinstance(result, dict) else None
        if status == "written":
            written += 1
        elif status == "rejected" and isinstance(result, dict) and result.get("reason"):
            reasons[str(result["reason"])[:64]] += 1
        else:
            return Transient(
                BAD_ANSWER, "ingest answered 200 with a result neither written nor rejected", 200
            )
    return Delivered(written, count - written, reasons)


def classify(response: httpx.Response, count: int) -> Outcome:
    status = response.status_code
    if status == 200:
        return read_answer(response, count)
    if status in TRANSIENT_4XX:
        cause = THROTTLED if status == 429 else SERVER_ERROR
        return Transient(cause, f"ingest answered {status}", status, parse_retry_after(response))
    if 400 <= status < 500:
        text = " ".join(response.text[:DETAIL_CHARS].split())
        return Permanent(
            PERMANENT_CAUSES.get(status, HTTP_4XX), f"ingest answered {status}: {text}", status
        )
    if status >= 500:
        return Transient(
            SERVER_ERROR, f"ingest answered {status}", status, parse_retry_after(response)
        )
    return Transient(BAD_ANSWER, f"ingest answered {status}, not its 200", status)


def register_tasks(
    app: Celery,
    settings: WorkerSettings,
    metrics: WorkerMetrics | None = None,
    dead_letters: DeadLetterSender | None = None,
    dead_letter_queue: str = "cloudlog-dlq",
) -> Task:
    """``dead_letters``: how a batch is sent to the dead-letter queue (default: published with
    ``app`` on ``dead_letter_queue``)."""
    http = HttpClientHolder(settings)
    counted = metrics or WorkerMetrics()
    send_dead_letter = (
        dead_letters
        if dead_letters is not None
        else celery_dead_letter_sender(app, dead_letter_queue)
    )

    def attempt(
        batch: object, api_key: str | None, encoding: str | None, event_count: int | None
    ) -> tuple[Outcome, int]:
        try:
            body, count = request_body(batch, encoding, event_count)
        except PayloadTooLarge as exc:
            return Permanent(OVERSIZED, str(exc)), declared_count(event_count) or 0
        except PayloadError as exc:
            return Permanent(UNDECODABLE, str(exc)), declared_count(event_count) or 0
        headers = {"Content-Type": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        started = time.monotonic()
        try:
            response = http.get().post(BATCH_PATH, content=body, headers=headers)
        except httpx.TransportError as exc:
            counted.delivery_seconds.observe(time.monotonic() - started)
            return Transient(CONNECTION, f"ingest unreachable: {type(exc).__name__}"), count
        counted.delivery_seconds.observe(time.monotonic() - started)
        release(response)
        return classify(response, count), count

    @app.task(
        name=DELIVER_TASK_NAME,
        bind=True,
        acks_late=True,
        acks_on_failure_or_timeout=False,
        reject_on_worker_lost=True,
        max_retries=settings.max_retries,
        # A retry without a countdown carries no ETA (see retry below), not Celery's 180 s.
        default_retry_delay=None,
    )
    def deliver_batch(
        self: Task,
        batch: str | list[dict[str, Any]],
        api_key: str | None = None,
        encoding: str | None = None,
        event_count: int | None = None,
    ) -> dict[str, Any]:
        """``batch``: the events as payload.py encodes them (``encoding``, ``event_count``).
        ``api_key``: the app's tenant key, sent with the batch; else the worker's own."""
        task_id = self.request.id
        retries = self.request.retries or 0
        secrets = (api_key, settings.api_key)
        count = declared_count(event_count) or 0
        try:
            outcome, count = attempt(batch, api_key, encoding, event_count)
        except Exception as exc:  # anything unexpected: retried a few times, then dead-lettered
            detail = f"{type(exc).__name__}: {exc}"
            if retries >= min(settings.max_exception_retries, settings.max_retries):
                outcome = Permanent(UNEXPECTED, f"{detail} (after {retries} retries)")
            else:
                outcome = Transient(EXCEPTION, detail)
        if isinstance(outcome, Delivered):
            counted.batches_delivered.inc()
            counted.events_written.inc(outcome.written)
            counted.events_rejected.inc(outcome.rejected)
            if outcome.rejected:
                logger.warning(
                    "batch %s: %d events written, %d rejected (%s)",
                    task_id,
                    outcome.written,
                    outcome.rejected,
                    redact(", ".join(f"{r}: {n}" for r, n in sorted(outcome.reasons.items()))),
                )
            return {"written": outcome.written, "rejected": outcome.rejected}
        if isinstance(outcome, Transient):
            if retries < settings.max_retries:
                return retry(self, outcome, count, retries, secrets)
            outcome = Permanent(
                RETRIES_EXHAUSTED,
                f"{outcome.detail} (after {retries} retries)",
                outcome.status,
            )
        return dead_letter(self, outcome, batch, api_key, encoding, event_count, count, secrets)

    def retry(
        task: Task,
        outcome: Transient,
        count: int,
        retries: int,
        secrets: tuple[str | None, ...],
    ) -> dict[str, Any]:
        countdown = retry_countdown(retries, settings, outcome.retry_after)
        detail = redact(outcome.detail, *secrets)
        counted.retries.labels(cause=outcome.cause).inc()
        logger.warning(
            "batch %s of %d events: %s; retry %d/%d in %.1f s",
            task.request.id,
            count,
            detail,
            retries + 1,
            settings.max_retries,
            countdown,
        )
        kwargs = dict(task.request.kwargs or {})
        try:
            raise task.retry(
                exc=IngestUnavailable(detail),
                # No countdown (an ETA the receiving worker would hold the message for): SQS
                # keeps the copy hidden for the countdown instead (see the module's docstring).
                delay_seconds=delay_seconds(countdown),
                # Celery would show the arguments of the copy as they are: the key with them.
                argsrepr=task_argsrepr(
                    (task.request.args or [None])[0], kwargs.get("encoding"), count
                ),
                kwargsrepr=task_kwargsrepr(kwargs),
            )
        except (Retry, Reject):
            raise
        except Exception as exc:  # the copy could not be published: keep the message in SQS
            logger.error(
                "batch %s: the retry could not be queued (%s); leaving it in the queue",
                task.request.id,
                redact(f"{type(exc).__name__}: {exc}", *secrets),
            )
            raise Reject("retry not queued", requeue=True) from None

    def dead_letter(
        task: Task,
        outcome: Permanent,
        batch: object,
        api_key: str | None,
        encoding: str | None,
        event_count: int | None,
        count: int,
        secrets: tuple[str | None, ...],
    ) -> dict[str, Any]:
        detail = redact(outcome.detail, *secrets)
        kwargs: dict[str, Any] = {"encoding": encoding, "event_count": event_count}
        if api_key:
            kwargs["api_key"] = api_key
        header = {
            "cause": outcome.cause,
            "status": outcome.status,
            "detail": detail,
            "retries": task.request.retries or 0,
            "at": int(time.time() * 1000),
            "key": "task" if api_key else ("worker" if settings.api_key else "none"),
        }
        letter = DeadLetterMessage(
            task_id=task.request.id,
            args=[batch],
            kwargs=kwargs,
            retries=task.request.retries or 0,
            header=header,
        )
        try:
            send_dead_letter(letter)
        except Exception as exc:
            counted.dead_letter_failures.inc()
            logger.error(
                "batch %s of %d events: %s; it could not be sent to the dead-letter queue (%s): "
                "leaving it in the queue",
                task.request.id,
                count,
                detail,
                redact(f"{type(exc).__name__}: {exc}", *secrets),
            )
            raise Reject("dead letter not sent", requeue=True) from None
        counted.batches_dead_lettered.labels(cause=outcome.cause).inc()
        counted.events_dead_lettered.labels(cause=outcome.cause).inc(count)
        if outcome.status is not None and 400 <= outcome.status < 500:
            counted.batches_refused.labels(status=str(outcome.status)).inc()
            counted.events_refused.inc(count)
        logger.error(
            "batch %s of %d events sent to the dead-letter queue: %s (%s)",
            task.request.id,
            count,
            outcome.cause,
            detail,
        )
        answer: dict[str, Any] = {"written": 0, "dead_lettered": count, "cause": outcome.cause}
        if outcome.status is not None:
            answer["status"] = outcome.status
        return answer

    return deliver_batch
