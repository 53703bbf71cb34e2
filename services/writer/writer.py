"""The CloudWatch Logs writer: events in, one result per event out.

write() checks each event (admission.py), splits oversized ones (splitting.py), partitions by
stream (partition.py), orders (ordering.py), batches within every limit (batching.py) and sends
each batch (sender.py). Streams go in parallel through a bounded pool; within a stream batches go
one at a time under that stream's lock, which also holds across concurrent write() calls.
"""

from __future__ import annotations

import logging
import random as random_module
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Any

from cloudlog.aws import AwsSettings, make_client

from .admission import check_event
from .batching import plan_batches
from .dedupe import WrittenEvents
from .existence import BoundedTtlCache, ExistenceCache
from .locks import StripedLocks
from .models import EventResult, GroupOptions, LogEvent, Outcome, RejectReason
from .observer import WriterObserver
from .ordering import chronological
from .partition import StreamKey, partition, stream_key
from .retry import BackoffPolicy
from .sender import BatchSender, SequenceTokens
from .settings import WriterSettings
from .splitting import SplitError, split_event

logger = logging.getLogger(__name__)

# (index of the input event, the event or one of its parts)
_Item = tuple[int, LogEvent]


def make_logs_client(settings: WriterSettings, aws: AwsSettings | None = None) -> Any:
    """A CloudWatch Logs client for the writer: botocore's own retries off (our policy governs),
    timeouts from settings, and a connection pool as wide as the stream pool."""
    return make_client(
        "logs",
        aws or AwsSettings(),
        max_attempts=1,
        connect_timeout=settings.connect_timeout_seconds,
        read_timeout=settings.read_timeout_seconds,
        max_pool_connections=settings.stream_parallelism + 2,
    )


class CloudWatchWriter:
    """Writes LogEvents to CloudWatch Logs; blocking and thread-safe.

    ``client`` is a boto3 ``logs`` client (see :func:`make_logs_client`). ``group_options``
    gives retention, KMS key and tags for a group the writer has to create (default: from
    settings). ``observer`` hears of each PutLogEvents call and retry (observer.py; default:
    nobody). ``clock`` is wall time in seconds (for the 14-day / 2-hour window); ``sleep``,
    ``monotonic`` and ``random`` drive the backoff and can be replaced in tests.
    """

    def __init__(
        self,
        client: Any,
        settings: WriterSettings | None = None,
        *,
        group_options: Callable[[str], GroupOptions] | None = None,
        observer: WriterObserver | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
        random: Callable[[], float] = random_module.random,
    ) -> None:
        self._settings = settings or WriterSettings()
        s = self._settings
        self._clock = clock
        if group_options is None:
            defaults = s.default_group_options()

            def group_options(_group: str) -> GroupOptions:
                return defaults

        self._existence = ExistenceCache(s.cache_max_entries, s.cache_ttl_seconds, monotonic)
        tokens: SequenceTokens = BoundedTtlCache(
            s.cache_max_entries, s.cache_ttl_seconds, monotonic
        )
        policy = BackoffPolicy(
            max_attempts=s.max_attempts,
            max_total_seconds=s.max_retry_seconds,
            base_seconds=s.backoff_base_seconds,
            max_sleep_seconds=s.backoff_max_seconds,
            clock=monotonic,
            sleep=sleep,
            random=random,
        )
        self._sender = BatchSender(
            client,
            existence=self._existence,
            tokens=tokens,
            policy=policy,
            group_options=group_options,
            now_ms=self._now_ms,
            observer=observer,
            monotonic=monotonic,
        )
        self._locks = StripedLocks()
        self._pool = ThreadPoolExecutor(
            max_workers=s.stream_parallelism, thread_name_prefix="cloudlog-writer"
        )
        self._written = WrittenEvents(s.dedupe_max_entries, s.dedupe_ttl_seconds, monotonic)
        self._closed = False
        self._active = 0  # write() calls under way
        self._state = threading.Condition()

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    # -- public ---------------------------------------------------------------------------

    def write(self, events: Sequence[LogEvent]) -> list[EventResult]:
        """Write ``events``; blocks until each is written or rejected.

        Returns exactly one EventResult per input event, in input order. An event split into
        parts is WRITTEN only if every part was written. An exact duplicate (same destination,
        event_id, timestamp and message) of an event in the same call, or of one written
        recently, is not written again and shares that event's result.
        """
        with self._state:
            if self._closed:
                raise RuntimeError("CloudWatchWriter is closed")
            self._active += 1
        try:
            return self._write(events)
        finally:
            with self._state:
                self._active -= 1
                self._state.notify_all()

    def close(self) -> None:
        """Refuse new writes, wait for those under way, then release the threads. Idempotent."""
        with self._state:
            self._closed = True
            self._state.wait_for(lambda: self._active == 0)
        self._pool.shutdown(wait=True)

    def __enter__(self) -> CloudWatchWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- steps ----------------------------------------------------------------------------

    def _write(self, events: Sequence[LogEvent]) -> list[EventResult]:
        results: list[EventResult | None] = [None] * len(events)
        same_as: dict[int, int] = {}  # duplicate input index -> first index
        items = self._admit(events, results, same_as)
        failures: dict[int, EventResult] = {}
        for index, result in self._send_all(events, items):
            if not result.written:
                failures.setdefault(index, result)
        out: list[EventResult] = []
        for index, event in enumerate(events):
            first = same_as.get(index, index)
            final = results[first] or failures.get(first)
            out.append(final or EventResult(event.event_id, Outcome.WRITTEN))
        return out

    def _admit(
        self,
        events: Sequence[LogEvent],
        results: list[EventResult | None],
        same_as: dict[int, int],
    ) -> list[_Item]:
        """Events (or their parts) that may be sent; refusals go straight into ``results``."""
        now_ms = self._now_ms()
        items: list[_Item] = []
        first_index: dict[LogEvent, int] = {}
        for index, event in enumerate(events):
            first = first_index.setdefault(event, index)  # LogEvent is frozen: equal = duplicate
            if first != index:
                same_as[index] = first
                continue
            refusal = check_event(
                event, now_ms, self._existence.group_retention_days(event.log_group)
            )
            if refusal is not None:
                reason, detail = refusal
                results[index] = EventResult(event.event_id, Outcome.REJECTED, reason, detail)
                continue
            try:
                parts = split_event(event, self._settings.max_event_bytes)
            except SplitError as exc:
                results[index] = EventResult(
                    event.event_id, Outcome.REJECTED, RejectReason.INVALID, str(exc)
                )
                continue
            items.extend((index, part) for part in parts)
        return items

    def _send_all(
        self, events: Sequence[LogEvent], items: list[_Item]
    ) -> list[tuple[int, EventResult]]:
        by_stream = partition(items, key=lambda item: stream_key(item[1]))
        if len(by_stream) <= 1:
            return [
                pair
                for key, group in by_stream.items()
                for pair in self._send_stream(key, events, group)
            ]
        futures = [
            self._pool.submit(self._send_stream, key, events, group)
            for key, group in by_stream.items()
        ]
        return [pair for future in futures for pair in future.result()]

    def _send_stream(
        self, key: StreamKey, originals: Sequence[LogEvent], items: list[_Item]
    ) -> list[tuple[int, EventResult]]:
        """All of one stream's events, batch after batch, under the stream's lock.

        Checking and recording written events under the same lock makes the duplicate check
        exact between concurrent write() calls of this writer.
        """
        with self._locks.lock_for(key):
            fresh = [item for item in items if not self._written.seen(originals[item[0]])]
            try:
                out = self._send_batches(key, fresh)
            except Exception as exc:
                # A bug, not an AWS answer: still one result per event, and one that invites
                # the caller to try again rather than to drop the events.
                logger.exception("internal error writing to %s/%s", *key)
                detail = f"internal writer error: {exc!r}"
                reason = RejectReason.RETRIES_EXHAUSTED
                return [
                    (i, EventResult(e.event_id, Outcome.REJECTED, reason, detail)) for i, e in fresh
                ]
            failed = {index for index, result in out if not result.written}
            for index in {index for index, _ in fresh} - failed:
                self._written.record(originals[index])
            return out

    def _send_batches(self, key: StreamKey, items: list[_Item]) -> list[tuple[int, EventResult]]:
        group, stream = key
        ordered = chronological(items, lambda item: item[1].timestamp)
        events = [event for _, event in ordered]
        out: list[tuple[int, EventResult]] = []
        unreachable: EventResult | None = None
        for batch_range in plan_batches(events):
            batch = events[batch_range.start : batch_range.stop]
            if unreachable is not None:
                # The endpoint just exhausted a whole retry budget: do not spend another one
                # per remaining batch; the caller may retry later.
                reason, detail = unreachable.reason, unreachable.detail
                results = [EventResult(e.event_id, Outcome.REJECTED, reason, detail) for e in batch]
            else:
                results = self._sender.send(group, stream, batch)
                unreachable = next(
                    (r for r in results if r.reason is RejectReason.RETRIES_EXHAUSTED), None
                )
            out.extend(
                (ordered[i][0], result) for i, result in zip(batch_range, results, strict=True)
            )
        return out
