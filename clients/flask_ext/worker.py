"""``cloudlog worker``: a Celery worker consuming the SQS queue and delivering to ingest."""

from __future__ import annotations

from celery import Celery

from clients.flask_ext.celery_app import create_celery
from clients.flask_ext.settings import WorkerSettings, check_visibility_timeout
from clients.flask_ext.tasks import register_tasks
from cloudlog.aws import AwsSettings
from cloudlog.broker import BrokerSettings


def create_worker_app(
    worker: WorkerSettings | None = None,
    broker: BrokerSettings | None = None,
    aws: AwsSettings | None = None,
) -> Celery:
    worker = worker or WorkerSettings()
    broker = broker or BrokerSettings()
    check_visibility_timeout(worker, broker)
    app = create_celery(broker, aws or AwsSettings(), name="cloudlog-worker")
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # One message at a time per slot: a message waiting in a prefetch buffer still ages
        # toward its visibility timeout.
        worker_prefetch_multiplier=1,
        worker_concurrency=worker.worker_concurrency,
        worker_pool=worker.worker_pool,
    )
    register_tasks(app, worker)
    return app


def run_worker(concurrency: int | None = None, loglevel: str = "INFO") -> None:
    worker = WorkerSettings()
    if concurrency is not None:
        worker = worker.model_copy(update={"worker_concurrency": concurrency})
    app = create_worker_app(worker)
    app.worker_main(
        [
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
