"""Put one batch into one stream, and say what became of each of its events.

- Group and stream existence comes from a bounded cache; on a miss the stream is created (and
  its group, with retention, tags and KMS key, when the stream's creation says it is missing).
  DescribeLogStreams is never called.
- No sequence token is sent unless the endpoint demanded one for that stream
  (InvalidSequenceTokenException with ``expectedSequenceToken``); from then on the stream's
  token is kept, bounded, and followed from each ``nextSequenceToken``.
- Errors are classified (errors.py) and retried under the backoff policy (retry.py). A batch
  refused as invalid is bisected so that one bad event does not sink its neighbours.
- Each PutLogEvents call (events, seconds, outcome) and each retry (its cause) is told to an
  optional observer (observer.py), for metrics.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

from .errors import (
    ErrorKind,
    classify,
    describe,
    expected_sequence_token,
    reject_reason,
    retry_cause,
)
from .existence import BoundedTtlCache, ExistenceCache
from .models import EventResult, GroupOptions, LogEvent, Outcome, RejectReason
from .observer import PUT_OK, NullObserver, RetryCause, WriterObserver
from .partition import StreamKey
from .rejections import map_rejections
from .retry import BackoffPolicy

logger = logging.getLogger(__name__)

# Extra PutLogEvents calls one batch may spend isolating the events behind an
# InvalidParameterException (bisection): enough to single out a few bad events in 10,000.
MAX_ISOLATION_PUTS: Final = 64

SequenceTokens = BoundedTtlCache[StreamKey, str | None]
# Why an event of a batch was not written: (reason, detail).
Failure = tuple[RejectReason, str | None]


class _GiveUp(Exception):
    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class BatchSender:
    """Sends batches; thread-safe as long as one stream has one put in flight (writer.py)."""

    def __init__(
        self,
        client: Any,
        *,
        existence: ExistenceCache,
        tokens: SequenceTokens,
        policy: BackoffPolicy,
        group_options: Callable[[str], GroupOptions],
        now_ms: Callable[[], int] = lambda: int(time.time() * 1000),
        observer: WriterObserver | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """``observer`` hears of every PutLogEvents call and every retry (observer.py)."""
        self._client = client
        self._observer: WriterObserver = observer or NullObserver()
        self._monotonic = monotonic
        self._existence = existence
        self._tokens = tokens
        self._policy = policy
        self._group_options = group_options
        self._now_ms = now_ms

    # -- public ---------------------------------------------------------------------------

    def send(self, group: str, stream: str, batch: Sequence[LogEvent]) -> list[EventResult]:
        """One result per event of ``batch``, in batch order."""
        failed = self.failures(group, stream, batch)
        return [
            EventResult(event.event_id, Outcome.REJECTED, *failed[index])
            if index in failed
            else EventResult(event.event_id, Outcome.WRITTEN)
            for index, event in enumerate(batch)
        ]

    def failures(self, group: str, stream: str, batch: Sequence[LogEvent]) -> dict[int, Failure]:
        """Send ``batch``; the events not written, by index in the batch (the rest were)."""
        if not batch:
            return {}
        return self._send(group, stream, batch, 0, [MAX_ISOLATION_PUTS])

    # -- sending --------------------------------------------------------------------------

    def _send(
        self, group: str, stream: str, batch: Sequence[LogEvent], offset: int, budget: list[int]
    ) -> dict[int, Failure]:
        try:
            response = self._put_with_retries(group, stream, batch)
        except _GiveUp as give_up:
            if give_up.reason is RejectReason.INVALID and len(batch) > 1 and budget[0] >= 2:
                # The whole call was refused; find out which events are to blame.
                budget[0] -= 2
                middle = len(batch) // 2
                failed = self._send(group, stream, batch[:middle], offset, budget)
                failed.update(self._send(group, stream, batch[middle:], offset + middle, budget))
                return failed
            failure = (give_up.reason, give_up.detail)
            return dict.fromkeys(range(offset, offset + len(batch)), failure)
        if response is None:  # DataAlreadyAccepted: the endpoint holds this batch already
            return {}
        info = response.get("rejectedLogEventsInfo")
        if not info:
            return {}
        rejected = map_rejections(batch, info, self._now_ms())
        return {
            offset + index: (
                reason,
                f"rejected by CloudWatch Logs (rejectedLogEventsInfo: {reason.value})",
            )
            for index, reason in rejected.items()
        }

    def _put_with_retries(
        self, group: str, stream: str, batch: Sequence[LogEvent]
    ) -> dict[str, Any] | None:
        """The PutLogEvents response, None if already accepted; raises _GiveUp otherwise."""
        state = self._policy.start()
        while True:
            try:
                self._ensure_stream(group, stream)
                return self._put(group, stream, batch)
            except Exception as exc:
                kind = classify(exc)
                if kind is ErrorKind.ALREADY_ACCEPTED:
                    self._remember_token(group, stream, expected_sequence_token(exc))
                    return None
                if kind is ErrorKind.NOT_FOUND:
                    # Deleted behind our back (or cache stale): recreate on the next attempt.
                    self._existence.forget(group, stream)
                    self._tokens.discard((group, stream))  # a new stream starts without one
                    if state.retry_now():
                        self._observe_retry(RetryCause.NOT_FOUND)
                        continue
                elif kind is ErrorKind.SEQUENCE_TOKEN:
                    self._remember_token(group, stream, expected_sequence_token(exc))
                    if state.retry_now():
                        self._observe_retry(RetryCause.SEQUENCE_TOKEN)
                        continue
                elif kind is ErrorKind.RETRIABLE:
                    logger.info("retrying %s/%s after %s", group, stream, describe(exc))
                    if state.backoff():
                        self._observe_retry(retry_cause(exc))
                        continue
                else:
                    if type(exc).__module__.split(".")[0] not in ("botocore", "boto3"):
                        logger.exception("unexpected error writing to %s/%s", group, stream)
                    raise _GiveUp(reject_reason(exc), describe(exc)) from exc
                raise _GiveUp(
                    RejectReason.RETRIES_EXHAUSTED,
                    f"gave up after {state.attempts} attempts in {state.elapsed:.1f}s: "
                    f"{describe(exc)}",
                ) from exc

    def _put(self, group: str, stream: str, batch: Sequence[LogEvent]) -> dict[str, Any]:
        key = (group, stream)
        request: dict[str, Any] = {
            "logGroupName": group,
            "logStreamName": stream,
            "logEvents": [{"timestamp": e.timestamp, "message": e.message} for e in batch],
        }
        token_mode, token = self._tokens.lookup(key)
        if token:
            request["sequenceToken"] = token
        started = self._monotonic()
        try:
            response: dict[str, Any] = self._client.put_log_events(**request)
        except Exception as exc:
            self._observe_put(len(batch), started, classify(exc).value)
            raise
        self._observe_put(len(batch), started, PUT_OK)
        if token_mode:
            self._tokens.put(key, response.get("nextSequenceToken"))
        return response

    def _observe_put(self, events: int, started: float, outcome: str) -> None:
        seconds = self._monotonic() - started
        try:
            self._observer.put_log_events(events=events, seconds=seconds, outcome=outcome)
        except Exception:  # watching must never break writing
            logger.exception("writer observer failed")

    def _observe_retry(self, cause: RetryCause) -> None:
        try:
            self._observer.retry(cause)
        except Exception:
            logger.exception("writer observer failed")

    def _remember_token(self, group: str, stream: str, token: str | None) -> None:
        """The endpoint still speaks sequence tokens for this stream: follow them from now on."""
        self._tokens.put((group, stream), token)

    # -- existence ------------------------------------------------------------------------

    def _ensure_stream(self, group: str, stream: str) -> None:
        if self._existence.has_stream(group, stream):
            return
        try:
            self._client.create_log_stream(logGroupName=group, logStreamName=stream)
        except Exception as exc:
            kind = classify(exc)
            if kind is ErrorKind.NOT_FOUND:
                self._ensure_group(group)
                self._create_stream_again(group, stream)
            elif kind is not ErrorKind.ALREADY_EXISTS:
                raise
        self._existence.add_group(group)
        self._existence.add_stream(group, stream)

    def _create_stream_again(self, group: str, stream: str) -> None:
        try:
            self._client.create_log_stream(logGroupName=group, logStreamName=stream)
        except Exception as exc:
            if classify(exc) is not ErrorKind.ALREADY_EXISTS:
                raise

    def _ensure_group(self, group: str) -> None:
        options = self._group_options(group)
        request: dict[str, Any] = {"logGroupName": group}
        if options.kms_key_id:
            request["kmsKeyId"] = options.kms_key_id
        if options.tags:
            request["tags"] = dict(options.tags)
        try:
            self._client.create_log_group(**request)
        except Exception as exc:
            if classify(exc) is ErrorKind.ALREADY_EXISTS:
                self._existence.add_group(group)  # someone else's group: retention unknown
                return
            raise
        logger.info("created log group %s", group)
        retention = options.retention_days
        if retention is not None and not self._apply_retention(group, retention):
            retention = None
        self._existence.add_group(group, retention)

    def _apply_retention(self, group: str, days: int) -> bool:
        """Retention is applied with its own retries: once the group exists, a later attempt
        would find it and never come back here."""
        state = self._policy.start()
        while True:
            try:
                self._client.put_retention_policy(logGroupName=group, retentionInDays=days)
                return True
            except Exception as exc:
                if classify(exc) is ErrorKind.RETRIABLE and state.backoff():
                    continue
                # Events still go in; the missing retention is a configuration problem.
                logger.error("could not set %d-day retention on %s: %s", days, group, describe(exc))
                return False
