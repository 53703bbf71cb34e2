"""``cloudlog worker``: a Celery worker consuming the SQS queue and delivering to ingest.

Its logs are JSON lines on stdout (cloudlog/logging_json.py); its metrics are served on
``CLOUDLOG_WORKER_METRICS_PORT`` (worker_metrics.py).
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from celery.signals import setup_logging, worker_process_init, worker_ready

from cloudlog_core.aws import AwsSettings
from cloudlog_core.gc_settle import freeze_startup_objects
from cloudlog_core.logging_json import configure_json_logging
from cloudlog_wire.broker import MAX_HOLD_OPTION, BrokerSettings
from cloudlog_wire.celery_app import create_celery
from cloudlog_wire.payload import redact
from cloudlog_worker.metrics import WorkerMetrics, serve_metrics
from cloudlog_worker.settings import WorkerSettings, check_visibility_timeout
from cloudlog_worker.tasks import register_tasks

logger = logging.getLogger(__name__)


def create_worker_app(
    worker: WorkerSettings | None = None,
    broker: BrokerSettings | None = None,
    aws: AwsSettings | None = None,
    metrics: WorkerMetrics | None = None,
) -> Celery:
    """The worker's Celery app; ``metrics`` counts its deliveries (default: a registry of its
    own, served by nobody)."""
    worker = worker or WorkerSettings()
    broker = broker or BrokerSettings()
    check_visibility_timeout(worker, broker)
    app = create_celery(broker, aws or AwsSettings(), name="cloudlog-worker")
    app.conf.update(
        task_acks_late=True,
        # A failed task must not be acknowledged (the task catches everything itself: see
        # tasks.py; on SQS a reject without requeue deletes as well).
        task_acks_on_failure_or_timeout=False,
        task_reject_on_worker_lost=True,
        # One message at a time per slot: a message waiting in a prefetch buffer still ages
        # toward its visibility timeout.
        worker_prefetch_multiplier=1,
        worker_concurrency=worker.worker_concurrency,
        worker_pool=worker.worker_pool,
        # The transport extends each message it holds (sqs_transport.py), for as long as a task
        # may legitimately take; past that SQS redelivers it.
        broker_transport_options={
            **app.conf.broker_transport_options,
            MAX_HOLD_OPTION: worker.longest_task_seconds(),
        },
    )
    register_tasks(app, worker, metrics, dead_letter_queue=broker.dead_letter_queue_name)
    return app


class RedactingFormatter(logging.Formatter):
    """Wraps a handler's formatter: no API key in any line the worker writes (Celery's own
    "received", "retry" and "rejected" lines included, whatever a message's ``kwargsrepr``)."""

    def __init__(self, inner: logging.Formatter | None, *secrets: str | None) -> None:
        super().__init__()
        self._inner = inner or logging.Formatter()
        self._secrets = secrets

    def format(self, record: logging.LogRecord) -> str:
        return redact(self._inner.format(record), *self._secrets)


def redact_log_handlers(*secrets: str | None) -> None:
    """Every handler of the root logger writes through a ``RedactingFormatter``."""
    for handler in logging.getLogger().handlers:
        if not isinstance(handler.formatter, RedactingFormatter):
            handler.setFormatter(RedactingFormatter(handler.formatter, *secrets))


def _keep_our_logging(**kwargs: Any) -> None:
    """A ``setup_logging`` receiver: its presence stops Celery configuring logging itself."""


def _settle(**kwargs: Any) -> None:
    """``worker_ready`` (the process the threads pool runs tasks in) and ``worker_process_init``
    (each prefork child): startup objects frozen, so that the garbage cycles tasks leave are
    collected as they come (cloudlog/gc_settle.py)."""
    freeze_startup_objects()


def run_worker(concurrency: int | None = None, loglevel: str = "INFO") -> None:
    """The worker process: JSON logs, the metrics server, then Celery until it is stopped."""
    configure_json_logging(loglevel)
    setup_logging.connect(_keep_our_logging, weak=False)
    worker_ready.connect(_settle, weak=False)
    worker_process_init.connect(_settle, weak=False)
    worker = WorkerSettings()
    redact_log_handlers(worker.api_key)
    if concurrency is not None:
        worker = worker.model_copy(update={"worker_concurrency": concurrency})
    metrics = WorkerMetrics()
    app = create_worker_app(worker, metrics=metrics)
    app.conf.worker_hijack_root_logger = False
    try:
        serve_metrics(worker, metrics)
    except OSError as exc:
        raise SystemExit(
            f"worker metrics: cannot listen on {worker.worker_metrics_host}:"
            f"{worker.worker_metrics_port} ({exc}); set CLOUDLOG_WORKER_METRICS_PORT to a free "
            "port, or to 0 to turn the metrics off"
        ) from exc
    logger.info(
        "worker starting: pool %s, concurrency %d, queue %s",
        worker.worker_pool,
        worker.worker_concurrency,
        app.conf.task_default_queue,
    )
    app.worker_main(
        [
            "--quiet",  # no banner: our output is JSON lines
            "worker",
            f"--pool={worker.worker_pool}",
            f"--concurrency={worker.worker_concurrency}",
            f"--loglevel={loglevel}",
            f"--queues={app.conf.task_default_queue}",
            "--hostname=cloudlog@%h",
            "--without-mingle",
            "--without-gossip",
            "--without-heartbeat",
        ]
    )


def main() -> None:
    """``cloudlog-worker [--concurrency N] [--loglevel L]`` (also ``cloudlog worker``)."""
    import argparse

    parser = argparse.ArgumentParser(prog="cloudlog-worker", description=run_worker.__doc__)
    parser.add_argument("--concurrency", type=int, default=None, help="task slots [4]")
    parser.add_argument("--loglevel", default="INFO")
    args = parser.parse_args()
    run_worker(concurrency=args.concurrency, loglevel=args.loglevel)
