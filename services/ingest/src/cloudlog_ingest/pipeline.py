"""Group commit: events from many requests are written together, each request awaits its own.

Each tenant has its own queue and at most one commit in flight; while it runs, the tenant's new
submissions queue up and its next commit takes them (up to ``max_commit_events``), so the
busier the tenant, the larger and fewer its PutLogEvents calls. Commits of different tenants run
at once (up to ``max_concurrent_commits``, tenants taken in turn), so a tenant whose commit is
slow (thousands of streams to create, say) makes no other tenant wait: each request is answered
when its own commit is written. The writer shares its stream threads fairly between the commits
(cloudlog_writer.fairpool).

Accepted but unwritten events are bounded per tenant and in total: past a bound ``submit`` raises
``Overloaded`` and the caller answers 429. The last ``pending_reserve_fraction`` of the total is
kept for quiet tenants (each holding at most a quarter of that reserve), and no tenant may hold
more than the rest: however many tenants flood, the bound is theirs, never the others'.
``saturation_pending`` (for /readyz) leaves out the events of tenants at their own bound.

New groups and streams are a quota of their own, per tenant (quotas.NewStreamQuotas): ``submit``
counts the streams and groups of a request that the pipeline does not know to exist, and raises
``NewStreamsOverQuota`` (a 429 with its Retry-After) before anything is queued.

A commit that fails before anything is written (one request's events the journal cannot take,
say) is retried one submission at a time, so the failure is that request's alone.

Around each write the journal records the commit (see journal.py), in chunks of at most
``max_commit_streams`` streams, so that one ``begin`` record stays small whatever a tenant
sends; events the journal knows as written are answered "written" without being written
again. Events the writer rejects are also reported to the ``_rejected`` stream of their own
group, where the tenant can read why.
What happens to each event is counted, per tenant, in the service's metrics (metrics.py).

With ``idempotency`` (a ``BatchIdempotency``: DynamoDB, shared by every replica), each
submission made with ``idempotent=True`` (one ``POST /v1/logs``) is a batch claimed before its
commit is written, all the claims of a commit in one request (idempotency.py): a batch already
done is answered from its record, one another request is writing fails with
``BatchInProgress`` (429), one whose lease ended is read back from CloudWatch (``read_back``)
and what is not there yet is written. The journal then lives in memory: it still recognises,
per event, what this replica wrote.
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
from typing import Any

from cloudlog_ingest.confinement import REJECTED_STREAM
from cloudlog_ingest.idempotency import (
    BatchIdempotency,
    BatchInProgress,
    Claim,
    ClaimState,
    answer_from_record,
    batch_key,
)
from cloudlog_ingest.journal import DeliveryJournal, ReadBack
from cloudlog_ingest.metrics import IngestMetrics
from cloudlog_ingest.quotas import NewStreamQuotas
from cloudlog_ingest.settings import IngestSettings
from cloudlog_writer.existence import BoundedTtlCache
from cloudlog_writer.models import EventResult, LogEvent, Outcome

logger = logging.getLogger(__name__)

WriteFunction = Callable[[Sequence[LogEvent]], list[EventResult]]
DUPLICATE_DETAIL = "duplicate: already written"
# A rejection report quotes at most this much of the refused message, and says when it cut.
REJECTED_QUOTE_CHARS = 4_096


# Streams and groups remembered as existing (or promised to a request already admitted).
KNOWN_STREAMS_MAX = 100_000
KNOWN_STREAMS_TTL_SECONDS = 3600.0
PENDING_DETAIL = "too many events are pending; retry later"


class Overloaded(Exception):
    """More events are pending than the service will hold. ``retry_after``: seconds, when the
    pipeline knows better than the service's default."""

    def __init__(self, detail: str = PENDING_DETAIL, retry_after: int | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after = retry_after


class NewStreamsOverQuota(Overloaded):
    """The request would create more groups and streams than the tenant's quota allows now."""


class ShuttingDown(Exception):
    """The service no longer takes new work."""


class NothingWritten(Exception):
    """A commit failed before anything was written (its ``__cause__`` says why)."""


@dataclass(slots=True)
class _Submission:
    tenant: str
    events: Sequence[LogEvent]
    future: asyncio.Future[list[EventResult]]
    idempotent: bool = False  # a delivered batch: claimed in the idempotency store, if any
    key: str | None = None  # its batch key, once claimed
    claim: Claim | None = None


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
        pending_reserve_fraction: float = 0.0,
        max_concurrent_commits: int = 8,
        max_commit_streams: int = 256,
        new_streams: NewStreamQuotas | None = None,
        idempotency: BatchIdempotency | None = None,
        read_back: ReadBack | None = None,
    ):
        """``new_streams``: the per-tenant quota of group and stream creations (None: none).
        ``idempotency``: the batch records every replica shares (None: the journal alone);
        ``read_back``: event ids already in a stream's time range, for batches taken over."""
        self._write = write
        self._max_pending_events = max_pending_events
        reserve = int(max_pending_events * pending_reserve_fraction)
        self._shared_pending = max(1, max_pending_events - reserve)
        self._quiet_events = reserve // 4  # what a tenant may hold and still use the reserve
        self._max_pending_per_tenant = min(
            max_pending_events_per_tenant or max_pending_events, self._shared_pending
        )
        self._max_commit_events = max_commit_events
        self._max_concurrent_commits = max(1, max_concurrent_commits)
        self._max_commit_streams = max(1, max_commit_streams)
        self._new_streams = new_streams
        self._idempotency = idempotency
        self._read_back = read_back
        self._known: BoundedTtlCache[tuple[str, ...], None] = BoundedTtlCache(
            KNOWN_STREAMS_MAX, KNOWN_STREAMS_TTL_SECONDS
        )
        self._in_flight: dict[str, asyncio.Task[None]] = {}
        if journal is None:  # not `journal or ...`: an empty journal has len() 0 and is falsy
            journal = DeliveryJournal(None, max_entries=100_000, ttl_seconds=3600)
        self._journal = journal
        self._queues: dict[str, deque[_Submission]] = {}
        self._pending_by_tenant: dict[str, int] = {}
        self._pending_events = 0
        self._ready = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(
            max_workers=self._max_concurrent_commits, thread_name_prefix="cloudlog-commit"
        )
        self._metrics = metrics or IngestMetrics()
        self._metrics.track_pending(lambda: self._pending_events, max_pending_events)

    @property
    def pending_events(self) -> int:
        return self._pending_events

    @property
    def max_pending_events(self) -> int:
        return self._max_pending_events

    @property
    def saturation_pending(self) -> int:
        """Pending events, leaving out those of tenants at their own bound: a tenant's flood is
        that tenant's 429, not the service's saturation (/readyz)."""
        full = self._max_pending_per_tenant - self._quiet_events
        return self._pending_events - sum(
            pending for pending in self._pending_by_tenant.values() if pending >= full
        )

    @property
    def closing(self) -> bool:
        """True once ``stop`` began: no new work is taken."""
        return self._closing

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="cloudlog-commit")

    def submit(
        self, events: Sequence[LogEvent], tenant: str = "", *, idempotent: bool = False
    ) -> asyncio.Future[list[EventResult]]:
        """Queue events for a coming commit; the future resolves to one result per event.
        ``idempotent``: the events are one delivered batch, which a redelivery repeats (it
        may fail with ``BatchInProgress``)."""
        if self._closing:
            raise ShuttingDown()
        count = len(events)
        tenant_pending = self._pending_by_tenant.get(tenant, 0)
        self._check_room(tenant_pending + count, self._pending_events + count)
        if self._new_streams is not None:
            self._charge_new_streams(tenant, events)
        future: asyncio.Future[list[EventResult]] = asyncio.get_running_loop().create_future()
        self._pending_events += count
        self._pending_by_tenant[tenant] = tenant_pending + count
        self._queues.setdefault(tenant, deque()).append(
            _Submission(tenant, events, future, idempotent and self._idempotency is not None)
        )
        self._ready.set()
        self._metrics.accepted(tenant, count)
        return future

    def _check_room(self, tenant_after: int, total_after: int) -> None:
        """Overloaded unless the tenant stays within its bound, and the total within the shared
        part (or, for a quiet tenant, within the whole bound: the reserve is for them)."""
        if tenant_after > self._max_pending_per_tenant:
            raise Overloaded("this tenant has too many events pending; retry later")
        if total_after <= self._shared_pending:
            return
        if tenant_after <= self._quiet_events and total_after <= self._max_pending_events:
            return
        raise Overloaded()

    def _charge_new_streams(self, tenant: str, events: Sequence[LogEvent]) -> None:
        """Take the request's unknown groups and streams from the tenant's creation quota, or
        raise NewStreamsOverQuota; once admitted they count as known (promised)."""
        known = self._known
        unknown: set[tuple[str, ...]] = set()
        keys: set[tuple[str, ...]] = {(event.log_group, event.log_stream) for event in events}
        for key in keys:
            if key not in known:
                unknown.add(key)
                if (group := (key[0],)) not in known:
                    unknown.add(group)
        if not unknown:
            return
        assert self._new_streams is not None
        wait = self._new_streams.admit(tenant, len(unknown))
        if wait:
            quota = self._new_streams
            raise NewStreamsOverQuota(
                f"the request would create {len(unknown)} log groups and streams, over the "
                f"quota of {quota.rate:g} per second (burst {quota.burst}); retry later, or "
                "write to fewer new streams at once",
                retry_after=wait,
            )
        for key in unknown:
            known.put(key, None)

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
                for task in list(self._in_flight.values()):
                    task.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _take_commit(self, tenant: str) -> list[_Submission]:
        """The tenant's next submissions, up to ``max_commit_events`` (one at least); a tenant
        with more left goes to the back of the turn."""
        queue = self._queues.pop(tenant)
        commit: list[_Submission] = []
        count = 0
        while queue and (not commit or count + len(queue[0].events) <= self._max_commit_events):
            submission = queue.popleft()
            commit.append(submission)
            count += len(submission.events)
        if queue:
            self._queues[tenant] = queue
        return commit

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._ready.wait()
            self._ready.clear()
            for tenant in list(self._queues):
                if len(self._in_flight) >= self._max_concurrent_commits:
                    break
                if tenant in self._in_flight:
                    continue
                commit = self._take_commit(tenant)
                self._in_flight[tenant] = loop.create_task(
                    self._run_commit(tenant, commit), name=f"cloudlog-commit-{tenant}"
                )
            if self._closing and not self._queues and not self._in_flight:
                return

    async def _run_commit(self, tenant: str, commit: list[_Submission]) -> None:
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
            del self._in_flight[tenant]
            self._ready.set()

    async def _commit_submissions(self, commit: list[_Submission], claimed: bool = False) -> None:
        """Write the submissions of ``commit`` together and answer each its own results.

        A failure before anything was written (``NothingWritten``: one request's events that
        cannot even be fingerprinted or journaled) fails no one else: the submissions are then
        committed one by one, and only the one that fails again gets the error.
        With an idempotency store, the batches are claimed first (``_claim_batches``), once.
        """
        loop = asyncio.get_running_loop()
        if not claimed and any(submission.idempotent for submission in commit):
            commit = await self._claim_batches(commit)
            if not commit:
                return
        events = [event for submission in commit for event in submission.events]
        tenants = [submission.tenant for submission in commit for _ in submission.events]
        recover = [
            event
            for submission in commit
            if submission.claim is not None and submission.claim.must_read_back
            for event in submission.events
        ]
        try:
            if recover:
                await loop.run_in_executor(self._executor, self._recover, recover)
            results = await loop.run_in_executor(self._executor, self._commit, events, tenants)
        except NothingWritten as exc:
            if len(commit) > 1:
                logger.warning(
                    "a commit of %d requests failed before writing (%s): committing each alone",
                    len(commit),
                    exc.__cause__,
                )
                for submission in commit:
                    await self._commit_submissions([submission], claimed=True)
                return
            await self._fail(commit, exc.__cause__ or exc, len(events))
        except Exception as exc:
            await self._fail(commit, exc, len(events))
        else:
            offset = 0
            store = self._idempotency
            for submission in commit:
                size = len(submission.events)
                mine = results[offset : offset + size]
                if store is not None and submission.claim is not None and submission.claim.owned:
                    assert submission.key is not None
                    store.complete(submission.key, mine)
                if not submission.future.done():
                    submission.future.set_result(mine)
                offset += size

    async def _claim_batches(self, commit: list[_Submission]) -> list[_Submission]:
        """Claim the commit's batches in the idempotency store (one request for all, in the
        common case); answer those done already or being written elsewhere. Returns the
        submissions left to write."""
        store = self._idempotency
        assert store is not None
        keyed = [submission for submission in commit if submission.idempotent]

        def claim() -> list[Claim]:
            for submission in keyed:
                submission.key = batch_key(submission.tenant, submission.events)
            return store.claim([submission.key or "" for submission in keyed])

        loop = asyncio.get_running_loop()
        try:
            claims = await loop.run_in_executor(self._executor, claim)
        except Exception as exc:
            await self._fail(commit, exc, sum(len(s.events) for s in commit))
            return []
        for submission, found in zip(keyed, claims, strict=True):
            submission.claim = found
            if found.must_write or submission.future.done():
                continue
            if found.state is ClaimState.BUSY:
                submission.future.set_exception(BatchInProgress(found.retry_after))
            else:
                self._metrics.deduplicated([submission.tenant] * len(submission.events))
                submission.future.set_result(answer_from_record(submission.events, found))
        return [s for s in commit if s.claim is None or s.claim.must_write]

    def _recover(self, events: list[LogEvent]) -> None:
        """Teach the journal which of ``events`` are in CloudWatch already: their batch was
        taken over from a replica that may have died while writing it."""
        if self._read_back is None:
            return
        ranges: dict[tuple[str, str], list[int]] = {}
        for event in events:
            bounds = ranges.setdefault((event.log_group, event.log_stream), [event.timestamp] * 2)
            bounds[0] = min(bounds[0], event.timestamp)
            bounds[1] = max(bounds[1], event.timestamp)
        found = 0
        for (group, stream), (low, high) in ranges.items():
            present = self._read_back(group, stream, low, high)
            if not present:
                continue
            written = [e for e in events if e.log_stream == stream and e.log_group == group]
            keys = self._journal.fingerprints([e for e in written if e.event_id in present])
            found += self._journal.remember(keys)
        logger.warning(
            "idempotency: read back %d stream(s) of a taken-over batch: %d of %d events were "
            "written already",
            len(ranges),
            found,
            len(events),
        )

    async def _fail(self, commit: list[_Submission], exc: BaseException, count: int) -> None:
        self._metrics.commits_failed.inc()
        logger.error("writer failed on a commit of %d events", count, exc_info=exc)
        for submission in commit:
            if not submission.future.done():
                submission.future.set_exception(exc)
        owned = [s.key for s in commit if s.key and s.claim is not None and s.claim.owned]
        if owned and self._idempotency is not None:
            await asyncio.get_running_loop().run_in_executor(
                self._executor, self._idempotency.release, owned
            )

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
        """Journal and write, in chunks of at most ``max_commit_streams`` streams (each of a
        stream's events in the same chunk). A chunk after the first that cannot be journaled
        fails the whole commit: what was written is journaled, and recognised when it comes
        back."""
        chunks = self._stream_chunks(events)
        if len(chunks) == 1:
            return self._write_chunk(events, tenants, keys)
        results: list[EventResult | None] = [None] * len(events)
        for number, positions in enumerate(chunks):
            try:
                written = self._write_chunk(
                    [events[p] for p in positions],
                    [tenants[p] for p in positions],
                    [keys[p] for p in positions],
                )
            except NothingWritten as exc:
                if number == 0:
                    raise
                raise RuntimeError("could not journal a commit's next streams") from exc.__cause__
            for position, result in zip(positions, written, strict=True):
                results[position] = result
        return [result for result in results if result is not None]

    def _stream_chunks(self, events: list[LogEvent]) -> list[list[int]]:
        """Positions of ``events``, grouped so that each group has at most
        ``max_commit_streams`` streams; one group in the common case."""
        limit = self._max_commit_streams
        chunk_of: dict[tuple[str, str], int] = {}
        chunks: list[list[int]] = [[]]
        for position, event in enumerate(events):
            key = (event.log_group, event.log_stream)
            chunk = chunk_of.get(key)
            if chunk is None:
                chunk = chunk_of[key] = len(chunk_of) // limit
                if chunk == len(chunks):
                    chunks.append([])
            chunks[chunk].append(position)
        return chunks

    def _write_chunk(
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


def pipeline_options(settings: IngestSettings) -> dict[str, Any]:
    """The ``WritePipeline`` keyword arguments that come from the service's settings."""
    return {
        "max_pending_events": settings.max_pending_events,
        "max_pending_events_per_tenant": settings.max_pending_events_per_tenant,
        "max_commit_events": settings.max_commit_events,
        "pending_reserve_fraction": settings.pending_reserve_fraction,
        "max_concurrent_commits": settings.max_concurrent_commits,
        "max_commit_streams": settings.max_commit_streams,
        "new_streams": NewStreamQuotas(settings.new_streams_per_second, settings.new_streams_burst),
    }
