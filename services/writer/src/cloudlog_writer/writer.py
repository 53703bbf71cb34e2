"""The CloudWatch Logs writer: events in, one result per event out.

write() checks each event (admission.py), splits oversized ones (splitting.py), partitions by
stream (partition.py's StreamKey, while admitting), orders (ordering.py), batches within
every limit (batching.py) and sends each batch (sender.py). Streams go in parallel through a
bounded pool shared fairly between concurrent write() calls (fairpool.py: one call's thousands
of new streams do not make another call's streams wait behind them); within a stream batches go
one at a time under that stream's lock, which also holds across concurrent write() calls.

The common case is made cheap, since every event passes here: names and the time window are
settled once per stream and call, an ASCII message is measured without encoding (its size then
serves splitting and batching), the in-call duplicate check compares whole events only when
their ids match, and a result object is made once per event, at the end. Anything unusual
(non-ASCII, empty, oversized, out of the window) takes the general path of admission.py.
"""

from __future__ import annotations

import functools
import logging
import operator
import random as random_module
import threading
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Final, NamedTuple

from cloudlog_core.aws import AwsSettings, make_client

from .admission import Refusal, check_event, check_names, oldest_allowed_ms
from .batching import plan_batches
from .dedupe import WrittenEvents
from .existence import BoundedTtlCache, ExistenceCache
from .fairpool import FairPool
from .limits import EVENT_OVERHEAD_BYTES, MAX_FUTURE_MS, event_size
from .locks import StripedLocks
from .models import EventResult, GroupOptions, LogEvent, Outcome, RejectReason
from .observer import WriterObserver
from .ordering import chronological
from .partition import StreamKey
from .retry import BackoffPolicy
from .sender import BatchSender, Failure, SequenceTokens
from .settings import WriterSettings
from .splitting import SplitError, split_event

logger = logging.getLogger(__name__)

# (index of the input event, the event or one of its parts, its size: UTF-8 bytes + 26)
_Item = tuple[int, LogEvent, int]


class _Stream(NamedTuple):
    """One stream as write() admits its events."""

    items: list[_Item]  # what may be sent
    oldest_ms: int  # the oldest timestamp allowed
    refusal: Refusal | None  # set if the names are invalid: every event of the stream is refused


def make_logs_client(settings: WriterSettings, aws: AwsSettings | None = None) -> Any:
    """A CloudWatch Logs client for the writer: botocore's own retries off (our policy governs),
    timeouts from settings, and a connection pool as wide as the stream pool plus the callers.

    botocore's parameter validation is off: it walks every event of every PutLogEvents call
    (a few microseconds an event), and admission (admission.py) and batching already refuse
    what CloudWatch would refuse. The client's other calls carry names that the same checks
    passed, or options validated by the settings.
    """
    return make_client(
        "logs",
        aws or AwsSettings(),
        max_attempts=1,
        connect_timeout=settings.connect_timeout_seconds,
        read_timeout=settings.read_timeout_seconds,
        max_pool_connections=settings.stream_parallelism + 16,
        parameter_validation=False,
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
        self._pool = FairPool(s.stream_parallelism, thread_name_prefix="cloudlog-writer")
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
        self._pool.close()

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
        refused: dict[int, EventResult] = {}  # input index -> why it was not written
        same_as = _duplicates(events)  # duplicate input index -> first index
        by_stream = self._admit(events, refused, same_as)
        for index, result in self._send_all(events, by_stream):
            refused.setdefault(index, result)  # a split event fails with its first failed part
        written = Outcome.WRITTEN
        if not refused and not same_as:  # the common case
            return [EventResult(event.event_id, written) for event in events]
        out: list[EventResult] = []
        for index, event in enumerate(events):
            final = refused.get(same_as.get(index, index))
            out.append(EventResult(event.event_id, written) if final is None else final)
        return out

    def _admit(
        self,
        events: Sequence[LogEvent],
        refused: dict[int, EventResult],
        same_as: dict[int, int],
    ) -> dict[StreamKey, list[_Item]]:
        """Per stream, the events (or their parts) that may be sent; refusals go into
        ``refused``. Names and the time window are settled once per stream, and each message
        is measured once (its size then serves splitting and batching)."""
        now_ms = self._now_ms()
        newest = now_ms + MAX_FUTURE_MS
        budget = self._settings.max_event_bytes - EVENT_OVERHEAD_BYTES
        by_stream: dict[StreamKey, list[_Item]] = {}
        streams: dict[StreamKey, _Stream] = {}
        for index, event in enumerate(events):
            if same_as and index in same_as:
                continue
            key = (event.log_group, event.log_stream)
            stream = streams.get(key, _UNSEEN)
            if stream is _UNSEEN:
                stream = streams[key] = self._open_stream(key, now_ms, by_stream)
            if stream.refusal is not None:
                refused[index] = EventResult(event.event_id, Outcome.REJECTED, *stream.refusal)
                continue
            items, oldest = stream.items, stream.oldest_ms
            message = event.message
            # ASCII text is its own UTF-8: its length is its size, and it cannot fail to encode.
            if (
                message
                and message.isascii()
                and len(message) <= budget
                and oldest <= event.timestamp <= newest
            ):
                items.append((index, event, len(message) + EVENT_OVERHEAD_BYTES))
            else:
                self._admit_slowly(index, event, now_ms, items, refused)
        return {key: items for key, items in by_stream.items() if items}

    def _open_stream(
        self, key: StreamKey, now_ms: int, by_stream: dict[StreamKey, list[_Item]]
    ) -> _Stream:
        refusal = check_names(*key)
        if refusal is not None:
            return _Stream([], 0, refusal)
        items = by_stream[key] = []
        retention = self._existence.group_retention_days(key[0])
        return _Stream(items, oldest_allowed_ms(now_ms, retention), None)

    def _admit_slowly(
        self,
        index: int,
        event: LogEvent,
        now_ms: int,
        items: list[_Item],
        refused: dict[int, EventResult],
    ) -> None:
        """Anything off the common path: non-ASCII, empty, oversized, out of the window."""
        refusal = check_event(event, now_ms, self._existence.group_retention_days(event.log_group))
        if refusal is not None:
            refused[index] = EventResult(event.event_id, Outcome.REJECTED, *refusal)
            return
        try:
            parts = split_event(event, self._settings.max_event_bytes)
        except SplitError as exc:
            refused[index] = EventResult(
                event.event_id, Outcome.REJECTED, RejectReason.INVALID, str(exc)
            )
            return
        items.extend((index, part, event_size(part.message)) for part in parts)

    def _send_all(
        self, events: Sequence[LogEvent], by_stream: dict[StreamKey, list[_Item]]
    ) -> list[tuple[int, EventResult]]:
        """The events not written (a split event may appear once per failed part)."""
        if len(by_stream) <= 1:
            return [
                pair
                for key, items in by_stream.items()
                for pair in self._send_stream(key, events, items)
            ]
        tasks = [
            functools.partial(self._send_stream, key, events, items)
            for key, items in by_stream.items()
        ]
        return [pair for failed in self._pool.run(tasks) for pair in failed]

    def _send_stream(
        self, key: StreamKey, originals: Sequence[LogEvent], items: list[_Item]
    ) -> list[tuple[int, EventResult]]:
        """All of one stream's events, batch after batch, under the stream's lock; returns
        those not written.

        Checking and recording written events under the same lock makes the duplicate check
        exact between concurrent write() calls of this writer.
        """
        remember = self._written.enabled
        with self._locks.lock_for(key):
            if remember:
                items = [item for item in items if not self._written.seen(originals[item[0]])]
            try:
                failed = self._send_batches(key, items)
            except Exception as exc:
                # A bug, not an AWS answer: still one result per event, and one that invites
                # the caller to try again rather than to drop the events.
                logger.exception("internal error writing to %s/%s", *key)
                detail = f"internal writer error: {exc!r}"
                reason = RejectReason.RETRIES_EXHAUSTED
                return [
                    (i, EventResult(e.event_id, Outcome.REJECTED, reason, detail))
                    for i, e, _ in items
                ]
            if remember:
                failed_indexes = {index for index, _ in failed}
                for index in {item[0] for item in items} - failed_indexes:
                    self._written.record(originals[index])
            return failed

    def _send_batches(self, key: StreamKey, items: list[_Item]) -> list[tuple[int, EventResult]]:
        group, stream = key
        stamps = [item[1].timestamp for item in items]
        if not all(map(operator.le, stamps, stamps[1:])):  # already in order, mostly
            items = chronological(items, lambda item: item[1].timestamp)
        events = [item[1] for item in items]
        failed: list[tuple[int, EventResult]] = []
        unreachable: Failure | None = None
        for batch_range in plan_batches(events, sizes=[item[2] for item in items]):
            batch = events[batch_range.start : batch_range.stop]
            if unreachable is not None:
                # The endpoint just exhausted a whole retry budget: do not spend another one
                # per remaining batch; the caller may retry later.
                failures = dict.fromkeys(range(len(batch)), unreachable)
            else:
                failures = self._sender.failures(group, stream, batch)
                unreachable = next(
                    (f for f in failures.values() if f[0] is RejectReason.RETRIES_EXHAUSTED),
                    None,
                )
            for position, (reason, detail) in failures.items():
                index, event, _ = items[batch_range.start + position]
                failed.append(
                    (index, EventResult(event.event_id, Outcome.REJECTED, reason, detail))
                )
        return failed


_UNSEEN: Final[Any] = object()


def _duplicates(events: Sequence[LogEvent]) -> dict[int, int]:
    """Input index -> index of the first exact duplicate (same destination, event_id,
    timestamp and message) earlier in ``events``.

    Keyed by event id first: only events sharing an id are compared whole, so the common
    case (distinct ids) never hashes a message.
    """
    same_as: dict[int, int] = {}
    first_by_id: dict[str, int] = {}
    by_event: dict[LogEvent, int] = {}  # events sharing an id with an earlier, different one
    for index, event in enumerate(events):
        first = first_by_id.setdefault(event.event_id, index)
        if first == index:
            continue
        if events[first] == event:
            same_as[index] = first
            continue
        earlier = by_event.setdefault(event, index)
        if earlier != index:
            same_as[index] = earlier
    return same_as
