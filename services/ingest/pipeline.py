"""Group commit: events from many requests are written together, each request awaits its own.

One commit is in flight at a time; while it runs, new submissions queue up and the next commit
takes all of them (up to ``max_commit_events``), so the busier the service, the larger and
fewer the PutLogEvents calls. The number of events accepted but not yet written is bounded:
past the bound ``submit`` raises ``Overloaded`` and the caller answers 429.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from services.ingest.journal import DeliveryJournal
from services.writer.models import EventResult, LogEvent, Outcome

logger = logging.getLogger(__name__)

WriteFunction = Callable[[Sequence[LogEvent]], list[EventResult]]


class Overloaded(Exception):
    """More events are pending than the service will hold."""


class ShuttingDown(Exception):
    """The service no longer takes new work."""


@dataclass(slots=True)
class _Submission:
    events: Sequence[LogEvent]
    future: asyncio.Future[list[EventResult]]


DUPLICATE_DETAIL = "duplicate: already written"


class WritePipeline:
    def __init__(
        self,
        write: WriteFunction,
        *,
        max_pending_events: int,
        max_commit_events: int,
        journal: DeliveryJournal | None = None,
    ):
        self._write = write
        if journal is None:  # not `journal or ...`: an empty journal has len() 0 and is falsy
            journal = DeliveryJournal(None, max_entries=100_000, ttl_seconds=3600)
        self._journal = journal
        self.duplicates = 0
        self._max_pending_events = max_pending_events
        self._max_commit_events = max_commit_events
        self._queue: asyncio.Queue[_Submission | None] = asyncio.Queue()
        self._pending_events = 0
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cloudlog-commit")

    @property
    def pending_events(self) -> int:
        return self._pending_events

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="cloudlog-commit")

    def submit(self, events: Sequence[LogEvent]) -> asyncio.Future[list[EventResult]]:
        """Queue events for the next commit; the future resolves to one result per event."""
        if self._closing:
            raise ShuttingDown()
        if self._pending_events + len(events) > self._max_pending_events:
            raise Overloaded()
        future: asyncio.Future[list[EventResult]] = asyncio.get_running_loop().create_future()
        self._pending_events += len(events)
        self._queue.put_nowait(_Submission(events, future))
        return future

    async def stop(self, timeout: float) -> None:
        """Take no more work, write what was accepted (within ``timeout``), then stop."""
        self._closing = True
        if self._task is not None:
            self._queue.put_nowait(None)
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except TimeoutError:
                logger.error(
                    "shutdown timeout: %d accepted events were not written", self._pending_events
                )
                self._task.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _commit(self, events: list[LogEvent]) -> list[EventResult]:
        """Write what was not written before; journal the commit around the write."""
        results: list[EventResult | None] = [None] * len(events)
        fresh_positions = []
        for position, event in enumerate(events):
            if self._journal.written(event):
                results[position] = EventResult(
                    event.event_id, Outcome.WRITTEN, None, DUPLICATE_DETAIL
                )
            else:
                fresh_positions.append(position)
        self.duplicates += len(events) - len(fresh_positions)
        if fresh_positions:
            fresh = [events[position] for position in fresh_positions]
            commit = self._journal.begin(fresh)
            written = self._write(fresh)
            self._journal.finish(
                commit, [e for e, r in zip(fresh, written, strict=True) if r.written]
            )
            for position, result in zip(fresh_positions, written, strict=True):
                results[position] = result
        return [result for result in results if result is not None]

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        stopping = False
        while not stopping:
            first = await self._queue.get()
            if first is None:
                break
            commit = [first]
            count = len(first.events)
            while count < self._max_commit_events and not self._queue.empty():
                item = self._queue.get_nowait()
                if item is None:
                    stopping = True
                    break
                commit.append(item)
                count += len(item.events)
            events = [event for submission in commit for event in submission.events]
            try:
                results = await loop.run_in_executor(self._executor, self._commit, events)
            except Exception as exc:
                logger.exception("writer failed on a commit of %d events", len(events))
                for submission in commit:
                    if not submission.future.done():
                        submission.future.set_exception(exc)
            else:
                offset = 0
                for submission in commit:
                    size = len(submission.events)
                    if not submission.future.done():
                        submission.future.set_result(results[offset : offset + size])
                    offset += size
            finally:
                self._pending_events -= count
