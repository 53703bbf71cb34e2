"""The delivery task the queue consumers run: POST a batch to the ingest service.

The batch arrives as payload.py encodes it and goes to ingest as it was serialised: decoded and
decompressed, never parsed (tasks of the older form, a list of events, are still delivered).
A batch that cannot be decoded is left to the dead-letter queue.

The SQS message is acknowledged only after ingest answered that every event of the batch was
written or rejected (``acks_late``); a worker that dies mid-task leaves the message to be
delivered again (``reject_on_worker_lost``). Connection errors, 5xx and 429 are retried with
exponential backoff and full jitter (honouring ``Retry-After``), up to ``max_retries``;
other 4xx answers are not retried: the batch is reported refused.

Past ``max_retries`` the task rejects its message with requeue: SQS makes it visible again
after ``CLOUDLOG_WAIT_TIME_SECONDS``, each new receive makes one more real attempt, and once it
has been received ``CLOUDLOG_MAX_RECEIVE_COUNT`` times the queue's redrive policy moves it to the
dead-letter queue (see ``cloudlog dlq``). Nothing is deleted unwritten.

Each outcome is counted in the worker's metrics (worker_metrics.py).
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from typing import Any

import httpx
from celery import Celery, Task
from celery.exceptions import Reject

from cloudlog_wire.celery_app import DELIVER_TASK_NAME
from cloudlog_wire.payload import (
    PayloadError,
    decode_events_json,
    parse_events_json,
    post_body,
)
from cloudlog_worker.metrics import CONNECTION, SERVER_ERROR, THROTTLED, WorkerMetrics
from cloudlog_worker.settings import WorkerSettings

logger = logging.getLogger(__name__)

BATCH_PATH = "/v1/logs"


class IngestUnavailable(Exception):
    """Ingest could not take the batch now (connection error, 5xx, 429)."""


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


def request_body(batch: object, encoding: str | None, event_count: int | None) -> tuple[bytes, int]:
    """The ``POST /v1/logs`` body for a task's batch, and its number of events.

    The batch is passed through: decoded and decompressed, never parsed.
    """
    if not isinstance(batch, str):
        raise PayloadError(f"unexpected batch argument of type {type(batch).__name__}")
    raw = decode_events_json(batch, encoding)
    count = event_count if isinstance(event_count, int) else len(parse_events_json(raw))
    return post_body(raw), count


def register_tasks(
    app: Celery, settings: WorkerSettings, metrics: WorkerMetrics | None = None
) -> Task:
    http = HttpClientHolder(settings)
    counted = metrics or WorkerMetrics()

    @app.task(
        name=DELIVER_TASK_NAME,
        bind=True,
        acks_late=True,
        reject_on_worker_lost=True,
        max_retries=settings.max_retries,
    )
    def deliver_batch(
        self: Task,
        batch: str | list[dict[str, Any]],
        api_key: str | None = None,
        encoding: str | None = None,
        event_count: int | None = None,
    ) -> dict[str, Any]:
        """``batch``: the events as payload.py encodes them (``encoding``, ``event_count``), or,
        from a publisher before that format, the list of events itself.
        ``api_key``: the app's tenant key, sent with the batch; else the worker's own."""
        try:
            body, count = request_body(batch, encoding, event_count)
        except PayloadError as exc:
            # Not deliverable by this worker (corrupt, or from a newer publisher): leave it to
            # the dead-letter queue, where it can be looked at and replayed.
            logger.error("a batch cannot be decoded: %s; leaving it to the dead-letter queue", exc)
            counted.batches_dead_lettered.inc()
            raise Reject(str(exc), requeue=True) from exc
        retry_after: float | None = None
        headers = {"Content-Type": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        started = time.monotonic()
        try:
            response = http.get().post(BATCH_PATH, content=body, headers=headers)
        except httpx.TransportError as exc:
            counted.delivery_seconds.observe(time.monotonic() - started)
            error: Exception = IngestUnavailable(f"ingest unreachable: {exc!r}")
            cause = CONNECTION
        else:
            counted.delivery_seconds.observe(time.monotonic() - started)
            release(response)
            status = response.status_code
            if status == 200:
                answer = response.json()
                for result in answer.get("results", []):
                    if result.get("status") != "written":
                        logger.warning(
                            "event %s rejected: %s %s",
                            result.get("event_id"),
                            result.get("reason"),
                            result.get("detail") or "",
                        )
                written, rejected = int(answer.get("written", 0)), int(answer.get("rejected", 0))
                counted.batches_delivered.inc()
                counted.events_written.inc(written)
                counted.events_rejected.inc(rejected)
                return {"written": written, "rejected": rejected}
            if status != 429 and status < 500:
                logger.error(
                    "ingest refused a batch of %d events with %d: %s",
                    count,
                    status,
                    response.text[:2000],
                )
                counted.batches_refused.labels(status=str(status)).inc()
                counted.events_refused.inc(count)
                return {"written": 0, "refused": count, "status": status}
            retry_after = parse_retry_after(response)
            error = IngestUnavailable(f"ingest answered {status}")
            cause = THROTTLED if status == 429 else SERVER_ERROR
        if self.request.retries >= settings.max_retries:
            logger.error(
                "batch of %d events: %s after %d retries; leaving it to the dead-letter queue",
                count,
                error,
                self.request.retries,
            )
            counted.batches_dead_lettered.inc()
            raise Reject(str(error), requeue=True)
        counted.retries.labels(cause=cause).inc()
        countdown = retry_countdown(self.request.retries, settings, retry_after)
        logger.warning(
            "batch of %d events: %s; retry %d/%d in %.1f s",
            count,
            error,
            self.request.retries + 1,
            settings.max_retries,
            countdown,
        )
        raise self.retry(exc=error, countdown=countdown)

    return deliver_batch
