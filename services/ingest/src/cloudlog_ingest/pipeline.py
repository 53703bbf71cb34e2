"""Group commit: events from many requests are written together, each request awaits its own.

One commit is in flight at a time; while it runs, new submissions queue up and the next commit
takes them (up to ``max_commit_events``), so the busier the service, the larger and fewer the
PutLogEvents calls. Each tenant has its own queue and a commit takes one submission from each
tenant in turn, so a tenant with a deep backlog cannot make another wait behind it. Accepted but
unwritten events are bounded per tenant and in total: past a bound ``submit`` raises
``Overloaded`` and the caller answers 429.

A commit that fails before anything is written (one request's events the journal cannot take,
say) is retried one submission at a time, so the failure is that request's alone.

Around each write the journal records the commit (see journal.py); events the journal knows as
written are answered "written" without being written again. Events the writer rejects are also
reported to the ``_rejected`` stream of their own group, where the tenant can read why.
What happens to each event is counted, per tenant, in the service's metrics (metrics.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from cloudlog_ingest.confinement import REJECTED_STREAM
from cloudlog_ingest.journal import DeliveryJournal
from cloudlog_ingest.metrics import IngestMetrics
from cloudlog_writer.models import EventResult, LogEvent, Outcome

logger = logging.getLogger(__name__)

WriteFunction = Callable[[Sequence[LogEvent]], list[EventResult]]
DUPLICATE_DETAIL = "duplicate: already written"
# A rejection report quotes at most this much of the refused message, and says when it cut.
REJECTED_QUOTE_CHARS = 4_096


class Overloaded(Exception):
    """More events are pending than the service will hold."""


class ShuttingDown(Exception):
    """The service no longer takes new work."""


class NothingWritten(Exception):
    """A commit failed before anything was written (its ``__cause__`` says why)."""


@dataclass(slots=True)
class _Submission:
    tenant: str
    events: Sequence[LogEvent]
    future: asyncio.Future[list[EventResult]]


def rejection_report(event: LogEvent, result: EventResult, now_ms: int) -> LogEvent:
    """The line written to ``_rejected`` in the event's group for a rejected event."""
    quoted = event.message[:REJECTED_QUOTE_CHARS]
    document = {
        "event_id": event.event_id,
        "reason": result.reason.value if result.reason else None,
        "detail": result.detail,
        "log_stream": event.log_stream,
        "timestamp": event.timestamp,
        "message": quoted,
        "message_truncated": len(quoted) < len(event.message),
    }
    return LogEvent(
        event_id=f"{event.event_id}.rejected",
        log_group=event.log_group,
        log_stream=REJECTED_STREAM,
        timestamp=now_ms,
        message=json.dumps(document, ensure_ascii=False, separators=(",", ":")),
    )


class WritePipeline:
    def __init__(
        self,
        write: WriteFunction,
        *,
        max_pending_events: int,
        max_pending_events_per_tenant: int | None = None,
        max_commit_events: int,
        journal: DeliveryJournal | None = None,
        metrics: IngestMetrics | None = None,
    ):
        self._write = write
        self._max_pending_events = max_pending_events
        self._max_pending_per_tenant = max_pending_events_per_tenant or max_pending_events
        self._max_commit_events = max_commit_events
        if journal is None:  # not `journal or ...`: an empty journal has len() 0 and is falsy
            journal = DeliveryJournal(None, max_entries=100_000, ttl_seconds=3600)
        self._journal = journal
        self._queues: dict[str, deque[_Submission]] = {}
        self._pending_by_tenant: dict[str, int] = {}
        self._pending_events = 0
        self._ready = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cloudlog-commit")
        self._metrics = metrics or IngestMetrics()
        self._metrics.track_pending(lambda: self._pending_events, max_pending_events)

    @property
    def pending_events(self) -> int:
        return self._pending_events

    @property
    def max_pending_events(self) -> int:
        return self._max_pending_events

    @property
    def closing(self) -> bool:
        """True once ``stop`` began: no new work is taken."""
        return self._closing

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="cloudlog-commit")

    def submit(
        self, events: Sequence[LogEvent], tenant: str = ""
    ) -> asyncio.Future[list[EventResult]]:
        """Queue events for a coming commit; the future resolves to one result per event."""
        if self._closing:
            raise ShuttingDown()
        count = len(events)
        tenant_pending = self._pending_by_tenant.get(tenant, 0)
        if (
            self._pending_events + count > self._max_pending_events
            or tenant_pending + count > self._max_pending_per_tenant
        ):
            raise Overloaded()
        future: asyncio.Future[list[EventResult]] = asyncio.get_running_loop().create_future()
        self._pending_events += count
        self._pending_by_tenant[tenant] = tenant_pending + count
        self._queues.setdefault(tenant, deque()).append(_Submission(tenant, events, future))
        self._ready.set()
        self._metrics.accepted(tenant, count)
        return future

    async def stop(self, timeout: float) -> None:
        """Take no more work, write what was accepted (within ``timeout``), then stop."""
        self._closing = True
        self._ready.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except TimeoutError:
                logger.error(
                    "shutdown timeout: %d accepted events were not written", self._pending_events
                )
                self._task.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _take_commit(self) -> list[_Submission]:
        """Up to ``max_commit_events``, one submission from each tenant in turn."""
        commit: list[_Submission] = []
        count = 0
        while self._queues and count < self._max_commit_events:
            for tenant in list(self._queues):
                queue = self._queues[tenant]
                submission = queue.popleft()
                if not queue:
                    del self._queues[tenant]
                commit.append(submission)
                count += len(submission.events)
                if count >= self._max_commit_events:
                    break
        return commit

    async def _run(self) -> None:
        while True:
            await self._ready.wait()
            commit = self._take_commit()
            if not commit:
                if self._closing:
                    return
                self._ready.clear()
                continue
            count = sum(len(submission.events) for submission in commit)
            started = time.monotonic()
            try:
                await self._commit_submissions(commit)
            finally:
                self._metrics.committed(count, time.monotonic() - started)
                for submission in commit:
                    size = len(submission.events)
                    self._pending_events -= size
                    left = self._pending_by_tenant[submission.tenant] - size
                    if left:
                        self._pending_by_tenant[submission.tenant] = left
                    else:
                        del self._pending_by_tenant[submission.tenant]

    async def _commit_submissions(self, commit: list[_Submission]) -> None:
        """Write the submissions of ``commit`` together and answer each its own results.

        A failure before anything was written (``NothingWritten``: one request's events that
        cannot even be fingerprinted or journaled) fails no one else: the submissions are then
        committed one by one, and only the one that fails again gets the error.
        """
        loop = asyncio.get_running_loop()
        events = [event for submission in commit for event in submission.events]
        tenants = [submission.tenant for submission in commit for _ in submission.events]
        try:
            results = await loop.run_in_executor(self._executor, self._commit, events, tenants)
        except NothingWritten as exc:
            if len(commit) > 1:
                logger.warning(
                    "a commit of %d requests failed before writing (%s): committing each alone",
                    len(commit),
                    exc.__cause__,
                )
                for submission in commit:
                    await self._commit_submissions([submission])
                return
            self._fail(commit, exc.__cause__ or exc, len(events))
        except Exception as exc:
            self._fail(commit, exc, len(events))
        else:
            offset = 0
            for submission in commit:
                size = len(submission.events)
                if not submission.future.done():
                    submission.future.set_result(results[offset : offset + size])
                offset += size

    def _fail(self, commit: list[_Submission], exc: BaseException, count: int) -> None:
        self._metrics.commits_failed.inc()
        logger.error("writer failed on a commit of %d events", count, exc_info=exc)
        for submission in commit:
            if not submission.future.done():
                submission.future.set_exception(exc)

    def _commit(self, events: list[LogEvent], tenants: list[str]) -> list[EventResult]:
        """Write what was not written before; journal the commit around the write.

        ``tenants[i]`` submitted ``events[i]``: the metrics count per tenant. Each event's
        journal fingerprint is computed once, here, and serves both the lookup and ``finish``.
        """
        journal = self._journal
        try:
            keys = journal.fingerprints(events)
            known = journal.known(keys)
        except Exception as exc:
            raise NothingWritten() from exc
        if not any(known):  # the common case: nothing redelivered
            return self._write_fresh(events, tenants, keys)
        results: list[EventResult | None] = [None] * len(events)
        fresh_positions = []
        duplicates_of = []
        for position, (event, seen) in enumerate(zip(events, known, strict=True)):
            if seen:
                results[position] = EventResult(
                    event.event_id, Outcome.WRITTEN, None, DUPLICATE_DETAIL
                )
                duplicates_of.append(tenants[position])
            else:
                fresh_positions.append(position)
        self._metrics.deduplicated(duplicates_of)
        if fresh_positions:
            written = self._write_fresh(
                [events[position] for position in fresh_positions],
                [tenants[position] for position in fresh_positions],
                [keys[position] for position in fresh_positions],
            )
            for position, result in zip(fresh_positions, written, strict=True):
                results[position] = result
        return [result for result in results if result is not None]

    def _write_fresh(
        self, events: list[LogEvent], tenants: list[str], keys: list[bytes]
    ) -> list[EventResult]:
        try:
            commit = self._journal.begin(events)
        except Exception as exc:
            raise NothingWritten() from exc
        results = self._write(events)
        written = Outcome.WRITTEN
        failed = [i for i, result in enumerate(results) if result.outcome is not written]
        if failed:
            refused = set(failed)
            keys = [key for i, key in enumerate(keys) if i not in refused]
        self._journal.finish(commit, keys)
        self._metrics.outcomes(tenants, results, refused=failed)
        if failed:
            self._report_rejections(
                [events[i] for i in failed],
                [results[i] for i in failed],
                [tenants[i] for i in failed],
            )
        return results

    def _report_rejections(
        self, events: list[LogEvent], results: list[EventResult], tenants: list[str]
    ) -> None:
        now_ms = int(time.time() * 1000)
        rejected = [
            (event, result, tenant)
            for event, result, tenant in zip(events, results, tenants, strict=True)
            if not result.written and event.log_stream != REJECTED_STREAM
        ]
        if not rejected:
            return
        reports = [rejection_report(event, result, now_ms) for event, result, _ in rejected]
        outcomes = self._write(reports)
        self._metrics.reported(
            [
                tenant
                for (_, _, tenant), outcome in zip(rejected, outcomes, strict=True)
                if outcome.written
            ]
        )
        for report, outcome in zip(reports, outcomes, strict=True):
            if not outcome.written:
                logger.error(
                    "could not report rejected event %s to %s/%s: %s",
                    report.event_id,
                    report.log_group,
                    REJECTED_STREAM,
                    outcome.detail,
                )
