"""Prometheus metrics of the delivery worker, served on their own HTTP port.

``CLOUDLOG_WORKER_METRICS_PORT`` (0: off) on ``CLOUDLOG_WORKER_METRICS_HOST`` (loopback by
default: widen it only toward the scraper). The counters live in the process that runs the
tasks: with the ``threads`` or ``solo`` pool, the worker process itself. Under ``prefork`` the
tasks run in child processes whose counters this server cannot see.

Label values are bounded: ``status`` is a 4xx status ingest answered, ``cause`` one of
``RETRY_CAUSES`` (retries) or ``DEAD_LETTER_CAUSES`` (batches the worker sent to the dead-letter
queue). No label or value ever carries a key or a payload.
"""

from __future__ import annotations

import logging
from typing import Final
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from cloudlog_worker.settings import WorkerSettings

logger = logging.getLogger(__name__)

CONNECTION: Final = "connection"  # ingest unreachable, or no answer in time
SERVER_ERROR: Final = "server_error"  # 5xx
THROTTLED: Final = "throttled"  # 429
BAD_ANSWER: Final = "bad_answer"  # a 2xx/3xx that is not ingest's answer for every event
EXCEPTION: Final = "exception"  # anything unexpected inside the task
RETRY_CAUSES: Final = (CONNECTION, SERVER_ERROR, THROTTLED, BAD_ANSWER, EXCEPTION)
# Why a batch went to the dead-letter queue (the ``cause`` the worker records with it).
HTTP_401: Final = "http_401"  # unknown or revoked key
HTTP_403: Final = "http_403"  # a group the tenant may not write
HTTP_413: Final = "http_413"  # body over ingest's limit
HTTP_422: Final = "http_422"  # invalid batch
HTTP_4XX: Final = "http_4xx"  # any other 4xx (its status is recorded with the batch)
UNDECODABLE: Final = "undecodable"  # corrupt, unknown encoding, not a list
OVERSIZED: Final = "oversized"  # expands past 16 MiB or 10,000 events
RETRIES_EXHAUSTED: Final = "retries_exhausted"  # transient failures past CLOUDLOG_MAX_RETRIES
UNEXPECTED: Final = "unexpected_error"  # exceptions past CLOUDLOG_MAX_EXCEPTION_RETRIES
DEAD_LETTER_CAUSES: Final = (
    HTTP_401,
    HTTP_403,
    HTTP_413,
    HTTP_422,
    HTTP_4XX,
    UNDECODABLE,
    OVERSIZED,
    RETRIES_EXHAUSTED,
    UNEXPECTED,
)
# One POST: ingest answers once the batch is written, which under throttling takes a while;
# the read timeout is 60 s by default.
DELIVERY_SECONDS_BUCKETS: Final = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry = registry or CollectorRegistry()
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
        self.batches_delivered = Counter(
            "cloudlog_worker_batches_delivered",
            "Batches ingest answered with 200: every event written or rejected.",
            registry=registry,
        )
        self.events_written = Counter(
            "cloudlog_worker_events_written",
            "Events ingest answered as written (duplicates it recognised included).",
            registry=registry,
        )
        self.events_rejected = Counter(
            "cloudlog_worker_events_rejected",
            "Events ingest answered as rejected (too old, too new, ...; see ingest's reasons).",
            registry=registry,
        )
        self.batches_refused = Counter(
            "cloudlog_worker_batches_refused",
            "Batches ingest refused with a 4xx other than 408/429: not retried; sent to the "
            "dead-letter queue (cloudlog_worker_batches_dead_lettered).",
            ["status"],
            registry=registry,
        )
        self.events_refused = Counter(
            "cloudlog_worker_events_refused",
            "Events in the batches ingest refused.",
            registry=registry,
        )
        self.retries = Counter(
            "cloudlog_worker_retries",
            "Deliveries scheduled again, by cause: connection, server_error (5xx), throttled "
            "(429), bad_answer (a 2xx that is not ingest's full answer), exception.",
            ["cause"],
            registry=registry,
        )
        for cause in RETRY_CAUSES:
            self.retries.labels(cause=cause)  # present at 0 from the start
        self.batches_dead_lettered = Counter(
            "cloudlog_worker_batches_dead_lettered",
            "Batches the worker sent to the dead-letter queue with their cause, then acknowledged.",
            ["cause"],
            registry=registry,
        )
        self.events_dead_lettered = Counter(
            "cloudlog_worker_events_dead_lettered",
            "Events in the batches sent to the dead-letter queue, by cause.",
            ["cause"],
            registry=registry,
        )
        for cause in DEAD_LETTER_CAUSES:
            self.batches_dead_lettered.labels(cause=cause)
            self.events_dead_lettered.labels(cause=cause)
        self.dead_letter_failures = Counter(
            "cloudlog_worker_dead_letter_send_failures",
            "Batches that could not be sent to the dead-letter queue: left in the queue.",
            registry=registry,
        )
        self.delivery_seconds = Histogram(
            "cloudlog_worker_delivery_duration_seconds",
            "Time of one POST of a batch to ingest, answered or not.",
            buckets=DELIVERY_SECONDS_BUCKETS,
            registry=registry,
        )


def serve_metrics(settings: WorkerSettings, metrics: WorkerMetrics) -> WSGIServer | None:
    """Serve ``/metrics`` on a daemon thread, if a port is set; the server, or None.

    A port already taken is an error (OSError): set ``CLOUDLOG_WORKER_METRICS_PORT`` to another
    one, or to 0 to turn the metrics off.
    """
    port = settings.worker_metrics_port
    if not port:
        return None
    if settings.worker_pool == "prefork":
        logger.warning(
            "worker metrics: the prefork pool counts deliveries in its child processes, which "
            "this server cannot see; use the threads pool (CLOUDLOG_WORKER_POOL) to count them"
        )
    server, _ = start_http_server(
        port, addr=settings.worker_metrics_host, registry=metrics.registry
    )
    logger.info("worker metrics at http://%s:%d/metrics", settings.worker_metrics_host, port)
    return server
