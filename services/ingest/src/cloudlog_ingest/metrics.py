"""Prometheus metrics of the ingest service, served at ``GET /metrics``.

Each app has a registry of its own (not prometheus_client's global one), so tests that build
many apps in one process do not collide. Label values are bounded: ``tenant`` is the name of an
authenticated tenant from the registry (``""`` for work submitted without one, never anything a
caller typed), ``reason`` a ``RejectReason``, ``status`` a status code this service answered,
``route`` one of the log endpoints, ``outcome`` and ``cause`` come from small enums.

``/metrics`` names tenants (never keys or messages), so it is served only to the scraper: with
``CLOUDLOG_INGEST_METRICS_TOKEN`` set, to a request carrying ``Authorization: Bearer <token>``
(anything else: 401); without it, to nobody (404), as if there were no such endpoint. Tenant
API keys do not open it: a tenant must not see the others' names and counts
(``scrape_access``).
"""

from __future__ import annotations

import hmac
from collections import Counter as Tally
from collections.abc import Callable, Sequence
from enum import Enum
from typing import Final

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from pydantic import SecretStr

from cloudlog_ingest.bodylimit import ASGIApp, Message, Receive, Scope, Send
from cloudlog_writer.models import EventResult, Outcome
from cloudlog_writer.observer import RetryCause

METRICS_CONTENT_TYPE: Final = CONTENT_TYPE_LATEST
# Events per group commit: one event up to max_commit_events (50,000 by default).
COMMIT_EVENTS_BUCKETS: Final = (1, 5, 10, 50, 100, 500, 1_000, 5_000, 10_000, 50_000)
# A commit may retry for up to max_retry_seconds (60 by default) per batch.
COMMIT_SECONDS_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# Events per PutLogEvents call: at most 10,000 (AWS PutLogEvents quota).
PUT_EVENTS_BUCKETS: Final = (1, 10, 50, 100, 500, 1_000, 5_000, 10_000)
# One call; the read timeout is 30 s by default.
PUT_SECONDS_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class ScrapeAccess(Enum):
    GRANTED = 200
    UNAUTHORIZED = 401  # a token is configured and the request does not carry it
    OFF = 404  # no token configured: /metrics is not served on this port


def scrape_access(authorization: str | None, token: SecretStr | None) -> ScrapeAccess:
    """May this request read the metrics? ``authorization`` is the header as sent."""
    if token is None:
        return ScrapeAccess.OFF
    scheme, _, presented = (authorization or "").partition(" ")
    expected = token.get_secret_value().encode()
    if scheme.lower() == "bearer" and hmac.compare_digest(presented.strip().encode(), expected):
        return ScrapeAccess.GRANTED
    return ScrapeAccess.UNAUTHORIZED


class IngestMetrics:
    """Every ingest metric, on its own registry. Also the writer's observer (WriterObserver)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry = registry or CollectorRegistry()
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
        self.events_accepted = Counter(
            "cloudlog_ingest_events_accepted",
            "Events taken into the write pipeline (the request was not refused).",
            ["tenant"],
            registry=registry,
        )
        self.events_written = Counter(
            "cloudlog_ingest_events_written",
            "Events written to CloudWatch Logs by this service (duplicates not included).",
            ["tenant"],
            registry=registry,
        )
        self.events_rejected = Counter(
            "cloudlog_ingest_events_rejected",
            "Events not written, by reason (too_old, too_new, expired, invalid, ...).",
            ["tenant", "reason"],
            registry=registry,
        )
        self.events_deduplicated = Counter(
            "cloudlog_ingest_events_deduplicated",
            "Events answered 'written' without writing: the journal knew them as written.",
            ["tenant"],
            registry=registry,
        )
        self.rejection_reports = Counter(
            "cloudlog_ingest_rejection_reports_written",
            "Reports of rejected events written to the _rejected stream of their group.",
            ["tenant"],
            registry=registry,
        )
        self.requests_refused = Counter(
            "cloudlog_ingest_requests_refused",
            "Requests to the log endpoints answered with an error (401, 403, 413, 422, 429, ...).",
            ["route", "status"],
            registry=registry,
        )
        self.pending_events = Gauge(
            "cloudlog_ingest_pending_events",
            "Events accepted and not yet written or rejected.",
            registry=registry,
        )
        self.max_pending_events = Gauge(
            "cloudlog_ingest_max_pending_events",
            "The bound on pending events (CLOUDLOG_INGEST_MAX_PENDING_EVENTS); past it, 429.",
            registry=registry,
        )
        self.commit_events = Histogram(
            "cloudlog_ingest_commit_events",
            "Events in one group commit (duplicates included).",
            buckets=COMMIT_EVENTS_BUCKETS,
            registry=registry,
        )
        self.commit_seconds = Histogram(
            "cloudlog_ingest_commit_duration_seconds",
            "Time to write one group commit, retries included.",
            buckets=COMMIT_SECONDS_BUCKETS,
            registry=registry,
        )
        self.commits_failed = Counter(
            "cloudlog_ingest_commits_failed",
            "Group commits the writer raised on (each of their requests got a 500).",
            registry=registry,
        )
        self.put_calls = Counter(
            "cloudlog_writer_put_log_events",
            "PutLogEvents calls, by outcome: ok, or the error's kind (retriable, permanent, ...).",
            ["outcome"],
            registry=registry,
        )
        self.put_events = Histogram(
            "cloudlog_writer_put_log_events_batch_events",
            "Events in one PutLogEvents call.",
            buckets=PUT_EVENTS_BUCKETS,
            registry=registry,
        )
        self.put_seconds = Histogram(
            "cloudlog_writer_put_log_events_duration_seconds",
            "Time of one PutLogEvents call, answered or failed.",
            buckets=PUT_SECONDS_BUCKETS,
            registry=registry,
        )
        self.retries = Counter(
            "cloudlog_writer_retries",
            "Batches tried again, by cause (throttled, server_error, connection, ...).",
            ["cause"],
            registry=registry,
        )

    # -- the pipeline ---------------------------------------------------------------------

    def track_pending(self, pending: Callable[[], int], bound: int) -> None:
        self.pending_events.set_function(lambda: float(pending()))
        self.max_pending_events.set(bound)

    def accepted(self, tenant: str, count: int) -> None:
        self.events_accepted.labels(tenant=tenant).inc(count)

    def committed(self, events: int, seconds: float) -> None:
        self.commit_events.observe(events)
        self.commit_seconds.observe(seconds)

    def outcomes(
        self,
        tenants: Sequence[str],
        results: Sequence[EventResult],
        *,
        refused: Sequence[int] | None = None,
    ) -> None:
        """Written and rejected events; ``tenants[i]`` submitted the event of ``results[i]``.

        ``refused``: the indexes of the results not written, when the caller knows them.
        """
        if len(tenants) != len(results):
            raise ValueError("one tenant per result")
        if refused is None:
            ok = Outcome.WRITTEN
            refused = [i for i, result in enumerate(results) if result.outcome is not ok]
        if refused:
            skip = set(refused)
            written = Tally(tenant for i, tenant in enumerate(tenants) if i not in skip)
        else:
            written = Tally(tenants)  # counted in C: the common case costs little per event
        rejected: Tally[tuple[str, str]] = Tally()
        for i in refused:
            reason = results[i].reason
            rejected[tenants[i], reason.value if reason else "unknown"] += 1
        for tenant, count in written.items():
            self.events_written.labels(tenant=tenant).inc(count)
        for (tenant, reason_value), count in rejected.items():
            self.events_rejected.labels(tenant=tenant, reason=reason_value).inc(count)

    def deduplicated(self, tenants: Sequence[str]) -> None:
        for tenant, count in Tally(tenants).items():
            self.events_deduplicated.labels(tenant=tenant).inc(count)

    def reported(self, tenants: Sequence[str]) -> None:
        for tenant, count in Tally(tenants).items():
            self.rejection_reports.labels(tenant=tenant).inc(count)

    def refused(self, route: str, status: int) -> None:
        self.requests_refused.labels(route=route, status=str(status)).inc()

    # -- WriterObserver (services/writer/observer.py) -------------------------------------

    def put_log_events(self, *, events: int, seconds: float, outcome: str) -> None:
        self.put_calls.labels(outcome=outcome).inc()
        self.put_events.observe(events)
        self.put_seconds.observe(seconds)

    def retry(self, cause: RetryCause) -> None:
        self.retries.labels(cause=cause.value).inc()

    def exposition(self) -> bytes:
        """The registry in Prometheus' text format."""
        return generate_latest(self.registry)


class CountRefusals:
    """ASGI middleware: counts the log endpoints' error answers by route and status.

    Outermost but for Starlette's own error handler, so it sees the 413s of BodySizeLimit; an
    exception that escapes the app is counted as the 500 it becomes.
    """

    def __init__(self, app: ASGIApp, metrics: IngestMetrics, routes: frozenset[str]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = scope.get("path", "") if scope["type"] == "http" else ""
        if route not in self.routes:
            await self.app(scope, receive, send)
            return
        started = False

        async def counting_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if message["status"] >= 400:
                    self.metrics.refused(route, message["status"])
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        except Exception:
            if not started:
                self.metrics.refused(route, 500)
            raise
