"""The background thread that turns buffered events into Celery tasks, one task per batch.

The request path only appends to the buffer. This thread wakes at the flush interval or when a
full batch waits, packs events into tasks that stay under the SQS message limit after encoding,
and publishes them. When the broker is unreachable it retries with capped exponential backoff
and full jitter while the buffer's policy bounds what waits.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from clients.flask_ext.buffer import EventBuffer

logger = logging.getLogger(__name__)

# kombu base64-encodes the task body inside its JSON envelope (virtual transport
# ``body_encoding = 'base64'``); cloudlog turns off the SQS transport's second base64 of the
# envelope (``sqs_base64_encoding: False``, cloudlog/broker.py): the SQS body is about 4/3 of
# the task's JSON.
KOMBU_SQS_ENCODING_FACTOR = 4 / 3
# Celery's headers and properties around the body, generously (measured about 1.5 KB).
TASK_ENVELOPE_BYTES = 4_096
PUBLISH_BACKOFF_BASE_S = 0.1
# How long a fork waits for a publish in flight (a publish is bounded by the broker timeouts).
FORK_WAIT_S = 15.0
MAX_BACKOFF_EXPONENT = 16  # 2**16 * 0.1 s is far past any cap; keeps the float finite

Publish = Callable[[list[dict[str, Any]]], None]


def payload_budget(max_task_bytes: int) -> int:
    """Bytes of event JSON one task may carry so that its SQS message stays within the limit."""
    return int((max_task_bytes - TASK_ENVELOPE_BYTES) / KOMBU_SQS_ENCODING_FACTOR)


def json_size(value: Any) -> int:
    """Bytes of ``value`` as kombu's JSON encoder writes it: ASCII-escaped, with ", " and ": "
    separators (compact JSON would undercount by about 5%)."""
    return len(json.dumps(value))


# SQS's answer to a message over the queue's MaximumMessageSize (SendMessage,
# InvalidParameterValue): "One or more parameters are invalid. Reason: Message must be shorter
# than N bytes."
MESSAGE_TOO_LONG = "Message must be shorter than"


def split_event(event: dict[str, Any], budget: int) -> list[dict[str, Any]]:
    """Split an event too large for one task into parts that each fit. Never truncates.

    Each part keeps the timestamp and carries ``fields.cloudlog_part`` = {event_id, index, count}
    so the original can be put back together; parts get ids ``<event_id>.p<index>``.
    """
    message: str = event["message"]
    skeleton = {**event, "message": "", "event_id": event["event_id"] + ".p00000"}
    skeleton["fields"] = {
        **event.get("fields", {}),
        "cloudlog_part": {"event_id": event["event_id"], "index": 0, "count": 0},
    }
    room = budget - json_size(skeleton) - 64
    if room <= 0:
        raise ValueError("event fields alone exceed the task size budget")
    chunks: list[str] = []
    start = 0
    while start < len(message):
        length = min(len(message) - start, room)
        while (size := json_size(message[start : start + length])) > room:
            length = max(1, length * room // size - 1)
        chunks.append(message[start : start + length])
        start += length
    parts = []
    for index, chunk in enumerate(chunks, start=1):
        fields = {
            **event.get("fields", {}),
            "cloudlog_part": {"event_id": event["event_id"], "index": index, "count": len(chunks)},
        }
        parts.append(
            {
                **event,
                "event_id": f"{event['event_id']}.p{index}",
                "message": chunk,
                "fields": fields,
            }
        )
    return parts


def pack(events: list[dict[str, Any]], budget: int) -> Iterator[list[dict[str, Any]]]:
    """Group events, in order, into batches whose JSON stays within ``budget`` bytes.

    Sized a batch at a time (one encoding per batch, halved while too large), not an event at a
    time: the common case costs one ``json.dumps``. An event too large alone is split.
    """
    if not events:
        return
    if json_size(events) <= budget:
        yield events
        return
    if len(events) == 1:
        yield from pack(split_event(events[0], budget - 2), budget)
        return
    middle = len(events) // 2
    yield from pack(events[:middle], budget)
    yield from pack(events[middle:], budget)


class Dispatcher:
    def __init__(
        self,
        buffer: EventBuffer,
        publish: Publish,
        *,
        batch_max_events: int,
        max_task_bytes: int,
        flush_interval: float,
        publish_retry_max_seconds: float,
    ) -> None:
        self._buffer = buffer
        self._publish = publish
        self._batch_max_events = batch_max_events
        self._budget = payload_budget(max_task_bytes)
        self._flush_interval = flush_interval
        self._retry_max = publish_retry_max_seconds
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._start_lock = threading.Lock()
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        # Held while publishing; a fork waits for it (see before_fork).
        self._publishing = threading.Lock()
        self._held_for_fork = False
        self.published_events = 0
        self.published_tasks = 0
        self.publish_failures = 0
        self.abandoned_events = 0

    @property
    def batch_max_events(self) -> int:
        return self._batch_max_events

    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def ensure_started(self) -> None:
        if self._thread is not None and self._pid == os.getpid():
            return
        with self._start_lock:
            if self._thread is None or self._pid != os.getpid():
                self._pid = os.getpid()
                self._stop.clear()
                self._thread = threading.Thread(
                    target=self._run, name="cloudlog-dispatcher", daemon=True
                )
                self._thread.start()

    def before_fork(self) -> None:
        """Never fork in the middle of a publish.

        A child forked while this thread publishes inherits the locks it held (connection
        pools, the per-module import locks of kombu's and botocore's lazy imports) with no
        thread left to release them; its first publish would deadlock. Seen with gunicorn
        ``--preload``, whose master logs while it forks the workers.
        """
        self._held_for_fork = self._publishing.acquire(timeout=FORK_WAIT_S)

    def after_fork_in_parent(self) -> None:
        if self._held_for_fork:
            self._held_for_fork = False
            self._publishing.release()

    def reset_after_fork(self) -> None:
        """In a forked child the parent's thread does not exist: start afresh on first use."""
        self._publishing = threading.Lock()
        self._held_for_fork = False
        self._thread = None
        self._start_lock = threading.Lock()
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._idle.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._buffer.wait_for_events(self._batch_max_events, self._flush_interval)
            self._drain(deadline=None, full_batches_after_first=True)

    def _drain(self, deadline: float | None, full_batches_after_first: bool = False) -> bool:
        """Publish what is buffered. False if the deadline passed first.

        ``full_batches_after_first``: after the first batch, go on only while a full batch
        waits; a partial one waits for the next flush interval. Otherwise, under steady load,
        what arrived during each publish would go out as a task of a few dozen events: many
        more SQS messages and a backlog that grows (the benchmark saw p99 latency of 10 s).
        """
        first = True
        while True:
            if (
                not first
                and full_batches_after_first
                and len(self._buffer) < self._batch_max_events
            ):
                return True
            events = self._buffer.take(self._batch_max_events)
            if not events:
                return True
            first = False
            self._idle.clear()
            try:
                for batch in pack(events, self._budget):
                    if not self._publish_with_retry(batch, deadline):
                        return False
            finally:
                self._idle.set()

    def _publish_with_retry(self, batch: list[dict[str, Any]], deadline: float | None) -> bool:
        attempt = 0
        while True:
            try:
                with self._publishing:
                    self._publish(batch)
            except Exception as exc:
                if MESSAGE_TOO_LONG in str(exc) and len(batch) > 1:
                    # The queue holds smaller messages than CLOUDLOG_MAX_TASK_BYTES says: halve.
                    logger.warning(
                        "cloudlog: the queue refused a task as too long; lower "
                        "CLOUDLOG_MAX_TASK_BYTES to the queue's MaximumMessageSize"
                    )
                    middle = len(batch) // 2
                    return self._publish_with_retry(
                        batch[:middle], deadline
                    ) and self._publish_with_retry(batch[middle:], deadline)
                self.publish_failures += 1
                if attempt == 0:
                    logger.warning("cloudlog: publishing to the broker failed, retrying: %s", exc)
                attempt += 1
                ceiling = PUBLISH_BACKOFF_BASE_S * 2 ** min(attempt, MAX_BACKOFF_EXPONENT)
                pause = random.uniform(0, min(self._retry_max, ceiling))
                if deadline is not None and time.monotonic() + pause > deadline:
                    self.abandoned_events += len(batch)
                    logger.error(
                        "cloudlog: gave up on %d events at shutdown: broker unreachable: %s",
                        len(batch),
                        exc,
                    )
                    return False
                if self._stop.wait(pause) and deadline is None:
                    # Stopping without a deadline: keep the batch for the final flush.
                    self._buffer.requeue_front(batch)
                    return False
                continue
            self.published_events += len(batch)
            self.published_tasks += 1
            if attempt:
                logger.warning("cloudlog: broker reachable again after %d attempts", attempt + 1)
            return True

    def flush(self, timeout: float) -> bool:
        """Wait until everything buffered so far has been published (or ``timeout`` passes)."""
        deadline = time.monotonic() + timeout
        self._buffer.wake()
        while time.monotonic() < deadline:
            if len(self._buffer) == 0 and self._idle.is_set():
                return True
            time.sleep(0.01)
        return len(self._buffer) == 0 and self._idle.is_set()

    def close(self, timeout: float) -> bool:
        """Stop the thread and publish what is left within ``timeout``. True if nothing was left."""
        deadline = time.monotonic() + timeout
        self._stop.set()
        self._buffer.wake()
        if self._thread is not None and self._pid == os.getpid():
            self._thread.join(max(0.0, deadline - time.monotonic()))
        drained = self._drain(deadline=deadline)
        left = len(self._buffer)
        if left:
            self.abandoned_events += left
            logger.error("cloudlog: %d events were not published before shutdown", left)
        return drained and left == 0
