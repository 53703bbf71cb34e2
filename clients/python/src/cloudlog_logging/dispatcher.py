"""The background thread that turns buffered events into Celery tasks, one task per batch.

The request path only appends to the buffer. This thread wakes at the flush interval or when a
full batch waits, encodes events into tasks (``TaskEncoder``: one JSON serialisation and one
compression per batch, see payload.py) that stay under the SQS message limit and whose
uncompressed JSON stays under ingest's body limit, and publishes them. When the broker is
unreachable it retries with capped exponential backoff and full jitter while the buffer's policy
bounds what waits.

A ``Dispatcher`` serves one buffer. Alone it runs a thread of its own; given a ``runner`` (the
process-wide ``ProcessDispatcher`` of delivery.py, what the extension uses) it has no thread:
the runner's one thread drains every app's dispatcher, and the runner handles fork and exit.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from cloudlog_logging.buffer import EventBuffer
from cloudlog_logging.settings import DEFAULT_MAX_BATCH_BYTES
from cloudlog_wire.payload import (
    PLAIN_JSON,
    POST_WRAPPER_BYTES,
    ZLIB_BASE64,
    EncodedBatch,
    TaskCompression,
    encode,
    events_json,
    task_kwargs,
)

logger = logging.getLogger(__name__)

# What a task weighs on SQS: kombu writes the Celery message as a JSON envelope (headers,
# properties) whose "body" is base64 of ``[args, kwargs, embed]`` (virtual transport
# ``body_encoding = 'base64'``); cloudlog turns off the SQS transport's second base64 of the
# envelope (``sqs_base64_encoding: False``, cloudlog/broker.py). The body is computed exactly
# (``TaskEncoder.task_bytes``); the envelope around it is bounded generously (measured about
# 1.5 KB: task id, names, argsrepr, origin host and pid, delivery info).
TASK_ENVELOPE_BYTES = 4_096
# Celery's third element of the body (``amqp.as_task_v2``): no callbacks, no chain, no chord.
CELERY_EMBED: dict[str, Any] = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
PUBLISH_BACKOFF_BASE_S = 0.1
# How long a fork waits for a publish in flight (a publish is bounded by the broker timeouts).
FORK_WAIT_S = 15.0
MAX_BACKOFF_EXPONENT = 16  # 2**16 * 0.1 s is far past any cap; keeps the float finite

Publish = Callable[[EncodedBatch], None]


class Runner(Protocol):
    """The one thread that drains many dispatchers (delivery.ProcessDispatcher)."""

    stop: threading.Event
    publishing: threading.Lock
    broker_reached: bool
    broker_failed: bool

    @property
    def is_running(self) -> bool: ...

    def attach(self, dispatcher: Dispatcher) -> None: ...

    def wake(self) -> None: ...


def json_size(value: Any) -> int:
    """Bytes of ``value`` as kombu's JSON encoder writes it: ASCII-escaped, with ", " and ": "
    separators. An upper bound of the compact UTF-8 JSON the payload carries."""
    return len(json.dumps(value))


def base64_size(length: int) -> int:
    return 4 * -(-length // 3)


def zlib_bound(length: int) -> int:
    """zlib's worst case for ``length`` bytes of input (``compressBound`` in zlib's compress.c)."""
    return length + (length >> 12) + (length >> 14) + (length >> 25) + 13


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
    # json_size bounds the payload's JSON of a message; of the fields, not always: the payload
    # may write a float longer (0.00001 for 1e-05), so the skeleton counts as the larger of both.
    skeleton_size = max(json_size(skeleton), len(events_json([skeleton])) - 2)
    room = budget - skeleton_size - 64
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


class TaskEncoder:
    """Turns events into tasks: serialised once, encoded (payload.py), sized exactly.

    Each task's SQS message stays within ``max_task_bytes`` and the worker's POST body (the
    uncompressed JSON) within ``max_batch_bytes``. A batch too large is halved and encoded
    again; an event too large alone is split (``split_event``). The common case costs one
    ``json.dumps`` and one ``zlib.compress`` per batch.
    """

    def __init__(
        self,
        *,
        max_task_bytes: int,
        max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
        compression: TaskCompression = TaskCompression.ZLIB,
        api_key: str | None = None,
    ) -> None:
        self._max_task_bytes = max_task_bytes
        self._max_json_bytes = max_batch_bytes - POST_WRAPPER_BYTES
        self._compression = TaskCompression(compression)
        self._api_key = api_key
        if self.event_budget() <= 0:
            raise ValueError("max_task_bytes / max_batch_bytes leave no room for an event")

    def task_bytes(self, data: str, encoding: str, count: int) -> int:
        """The SQS message size of a task carrying ``data``, at most.

        The body is kombu's JSON of ``[[data], kwargs, embed]`` (Python's separators, ASCII
        escapes), base64-encoded; ``TASK_ENVELOPE_BYTES`` covers the rest.
        """
        body = self._body_without_data(encoding, count)
        # data is base64 (ASCII, nothing to escape) or JSON text that kombu escapes again.
        body += len(data) + 2 if encoding == ZLIB_BASE64 else json_size(data)
        return TASK_ENVELOPE_BYTES + base64_size(body)

    def _body_without_data(self, encoding: str, count: int) -> int:
        """Bytes of the task body (kombu's JSON) around the batch argument."""
        return len(json.dumps([[], task_kwargs(encoding, count, self._api_key), CELERY_EMBED]))

    def event_budget(self) -> int:
        """``json_size`` one event (or part of one) may have so that it travels alone."""
        zlib = self._compression is TaskCompression.ZLIB
        other = self._body_without_data(ZLIB_BASE64 if zlib else PLAIN_JSON, 1)
        argument = (self._max_task_bytes - TASK_ENVELOPE_BYTES) // 4 * 3 - other
        if zlib:
            compressed = (argument - 2) // 4 * 3
            # The largest input whose worst-case compressed size still fits.
            raw = (compressed - 13) * 16_384 // 16_389
            while raw > 0 and zlib_bound(raw) > compressed:
                raw -= 1
        else:
            # kombu escapes the JSON text again: each character becomes at most two.
            raw = (argument - 2) // 2
        # Less 2 for the list's brackets around the one event.
        return min(raw, self._max_json_bytes) - 2

    def pack(self, events: list[dict[str, Any]]) -> Iterator[EncodedBatch]:
        """Encode events, in order, into as few tasks as fit."""
        yield from self._pack(events, splittable=True)

    def _pack(self, events: list[dict[str, Any]], *, splittable: bool) -> Iterator[EncodedBatch]:
        if not events:
            return
        raw = events_json(events)
        if len(raw) <= self._max_json_bytes:
            data, encoding = encode(raw, self._compression)
            if self.task_bytes(data, encoding, len(events)) <= self._max_task_bytes:
                yield EncodedBatch(events, data, encoding)
                return
        if len(events) == 1:
            if not splittable:  # cannot happen: event_budget is a worst case
                raise ValueError("a part of a split event does not fit in a task")
            parts = split_event(events[0], self.event_budget())
            for part in parts:
                yield from self._pack([part], splittable=False)
            return
        middle = len(events) // 2
        yield from self._pack(events[:middle], splittable=splittable)
        yield from self._pack(events[middle:], splittable=splittable)


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
        max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
        compression: TaskCompression = TaskCompression.ZLIB,
        api_key: str | None = None,
        runner: Runner | None = None,
    ) -> None:
        """``api_key``: the key the publisher sends with each task (it counts in a task's size).

        ``runner``: drive this dispatcher from the runner's thread instead of one of its own.
        """
        self._buffer = buffer
        self._publish = publish
        self._batch_max_events = batch_max_events
        self.encoder = TaskEncoder(
            max_task_bytes=max_task_bytes,
            max_batch_bytes=max_batch_bytes,
            compression=compression,
            api_key=api_key,
        )
        self._flush_interval = flush_interval
        self._retry_max = publish_retry_max_seconds
        self._thread: threading.Thread | None = None
        self._runner = runner
        self._started = False
        self._closed = False
        # Held while this dispatcher's buffer is drained: the runner's thread, or close().
        self._drain_lock = threading.Lock()
        self._flush_requested = False
        # Events taken from the buffer and not yet published or put back (one batch at most).
        self.in_flight = 0
        self.last_drain = 0.0
        if runner is not None:
            buffer.on_ready = runner.wake
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
    def flush_interval(self) -> float:
        return self._flush_interval

    @property
    def buffer(self) -> EventBuffer:
        return self._buffer

    @property
    def is_running(self) -> bool:
        if self._runner is not None:
            return self._started and self._runner.is_running
        return self._thread is not None and self._thread.is_alive()

    def ensure_started(self) -> None:
        # Every log call passes here: one attribute test, no os.getpid() system call. In a
        # forked child the fork hook has already called reset_after_fork, which forgets it all.
        if self._started:
            return
        with self._start_lock:
            if self._started:
                return
            if self._runner is not None:
                self._runner.attach(self)
            else:
                self._pid = os.getpid()
                self._stop.clear()
                self._thread = threading.Thread(
                    target=self._run, name="cloudlog-dispatcher", daemon=True
                )
                self._thread.start()
            self._started = True

    def is_due(self, now: float) -> bool:
        """For the runner: a full batch waits, a flush was asked for, or the interval passed."""
        waiting = len(self._buffer)
        return bool(waiting) and (
            waiting >= self._batch_max_events
            or self._flush_requested
            or now - self.last_drain >= self._flush_interval
        )

    def drain_due(self, now: float) -> None:
        """For the runner's thread: publish what is buffered, as this dispatcher's thread would."""
        if self._closed or not self._drain_lock.acquire(blocking=False):
            return
        try:
            self._flush_requested = False
            self.last_drain = now
            self._drain(deadline=None, full_batches_after_first=True)
        finally:
            self._drain_lock.release()

    def finish(self, deadline: float) -> int:
        """For the runner at exit: publish what is left by ``deadline``, quietly. Returns how many
        events were given up on (counted in ``abandoned_events``); the runner reports them all."""
        self._closed = True
        if len(self._buffer) == 0:
            return 0
        if time.monotonic() < deadline:
            self._drain(deadline=deadline, quiet=True)
        return self.abandon_all()

    def abandon_all(self) -> int:
        """Give up on everything still buffered; returns how many."""
        left = len(self._buffer.take(len(self._buffer) + 1_000_000))
        self.abandoned_events += left
        return left

    def _stop_event(self) -> threading.Event:
        return self._stop if self._runner is None else self._runner.stop

    def _publish_lock(self) -> threading.Lock:
        return self._publishing if self._runner is None else self._runner.publishing

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
        self._started = False
        self._drain_lock = threading.Lock()
        self._start_lock = threading.Lock()
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._idle.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._buffer.wait_for_events(self._batch_max_events, self._flush_interval)
            self._drain(deadline=None, full_batches_after_first=True)

    def _drain(
        self, deadline: float | None, full_batches_after_first: bool = False, quiet: bool = False
    ) -> bool:
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
            self.in_flight = len(events)
            try:
                left = self._publish_batches(self._encode(events), deadline, quiet)
                if left is not None:
                    if deadline is None or quiet:
                        # Stopping without a deadline: keep them for the final flush. Quiet: the
                        # caller counts them with everything else it gives up on.
                        self._buffer.requeue_front(left)
                    else:
                        self.abandoned_events += len(left)
                        logger.error("cloudlog: gave up on %d events at shutdown", len(left))
                    return False
            finally:
                self.in_flight = 0
                self._idle.set()

    def _encode(self, events: list[dict[str, Any]]) -> list[EncodedBatch]:
        """The tasks for ``events``. Should one event be impossible to encode, only that event is
        left out (counted in ``abandoned_events``, logged): the thread and its neighbours go on."""
        try:
            return list(self.encoder.pack(events))
        except Exception:
            logger.exception("cloudlog: a batch could not be encoded; encoding event by event")
        batches: list[EncodedBatch] = []
        for event in events:
            try:
                batches.extend(self.encoder.pack([event]))
            except Exception as exc:
                self.abandoned_events += 1
                logger.error("cloudlog: an event cannot be encoded and is dropped: %r", exc)
        return batches

    def _publish_batches(
        self, batches: list[EncodedBatch], deadline: float | None, quiet: bool = False
    ) -> list[dict[str, Any]] | None:
        """Publish in order. None once all are published; else the events that were not."""
        for index, batch in enumerate(batches):
            left = self._publish_with_retry(batch, deadline, quiet)
            if left is not None:
                return left + [event for later in batches[index + 1 :] for event in later.events]
        return None

    def _publish_with_retry(
        self, batch: EncodedBatch, deadline: float | None, quiet: bool = False
    ) -> list[dict[str, Any]] | None:
        """None once published; the batch's events if stopping (or the deadline) came first."""
        attempt = 0
        runner = self._runner
        stop = self._stop_event()
        while True:
            try:
                with self._publish_lock():
                    self._publish(batch)
            except Exception as exc:
                if MESSAGE_TOO_LONG in str(exc) and batch.count > 1:
                    # The queue holds smaller messages than CLOUDLOG_MAX_TASK_BYTES says: halve.
                    logger.warning(
                        "cloudlog: the queue refused a task as too long; lower "
                        "CLOUDLOG_MAX_TASK_BYTES to the queue's MaximumMessageSize"
                    )
                    middle = batch.count // 2
                    halves = [
                        *self.encoder.pack(batch.events[:middle]),
                        *self.encoder.pack(batch.events[middle:]),
                    ]
                    return self._publish_batches(halves, deadline, quiet)
                self.publish_failures += 1
                if runner is not None:
                    runner.broker_failed = True
                if attempt == 0:
                    logger.warning("cloudlog: publishing to the broker failed, retrying: %s", exc)
                attempt += 1
                ceiling = PUBLISH_BACKOFF_BASE_S * 2 ** min(attempt, MAX_BACKOFF_EXPONENT)
                pause = random.uniform(0, min(self._retry_max, ceiling))
                if deadline is not None and time.monotonic() + pause > deadline:
                    if not quiet:
                        logger.error("cloudlog: broker unreachable at shutdown: %s", exc)
                    return batch.events
                if (stop.wait(pause) or self._closed) and deadline is None:
                    return batch.events
                continue
            if runner is not None:
                runner.broker_reached = True
            self.published_events += batch.count
            self.published_tasks += 1
            if attempt:
                logger.warning("cloudlog: broker reachable again after %d attempts", attempt + 1)
            return None

    def flush(self, timeout: float) -> bool:
        """Wait until everything buffered so far has been published (or ``timeout`` passes)."""
        deadline = time.monotonic() + timeout
        self._flush_requested = True
        self._buffer.wake()
        while time.monotonic() < deadline:
            if len(self._buffer) == 0 and self._idle.is_set():
                return True
            time.sleep(0.01)
        return len(self._buffer) == 0 and self._idle.is_set()

    def close(self, timeout: float) -> bool:
        """Stop the thread and publish what is left within ``timeout``. True if nothing was left.

        Driven by a runner, only this dispatcher stops: the runner's thread goes on for others.
        """
        deadline = time.monotonic() + timeout
        if self._runner is not None:
            return self._close_driven(deadline)
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

    def _close_driven(self, deadline: float) -> bool:
        self._closed = True  # the runner's thread skips it, and a retry in progress ends
        if not self._drain_lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            left = self.abandon_all()
            logger.error("cloudlog: %d events were not published before shutdown", left)
            return False
        try:
            drained = self._drain(deadline=deadline)
        finally:
            self._drain_lock.release()
        left = len(self._buffer)
        if left:
            self.abandon_all()
            logger.error("cloudlog: %d events were not published before shutdown", left)
        return drained and left == 0
