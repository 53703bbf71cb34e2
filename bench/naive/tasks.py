"""The seed's Celery side: ``send_log_to_logger`` POSTs one log line to the logger service.

Run the worker with Celery's defaults (prefork pool, one child per core)::

    NAIVE_BROKER_URL=sqs://testing:testing@127.0.0.1:4566 NAIVE_LOGGER_URL=http://127.0.0.1:8090 \
        python -m celery -A bench.naive.tasks worker
"""

from __future__ import annotations

import os
from typing import Any

import requests
from celery import Celery

QUEUE = "naive-logs"

celery_app = Celery("naive", broker=os.environ.get("NAIVE_BROKER_URL", "sqs://"))
celery_app.conf.update(
    # The stock kombu SQS transport, as in the seed. A local endpoint speaks plain http. Polling
    # as cloudlog's worker does: with kombu's default 1 s pause between polls the worker runs
    # one prefetch (8 tasks) per second, and we would be measuring that default, not the design.
    broker_transport_options={
        "region": "us-east-1",
        "is_secure": False,
        "polling_interval": 0.1,
        "wait_time_seconds": 10,
    },
    task_default_queue=QUEUE,
    task_ignore_result=True,
    worker_hijack_root_logger=False,
)
LOGGER_URL = os.environ.get("NAIVE_LOGGER_URL", "http://127.0.0.1:8090")


@celery_app.task
def send_log_to_logger(payload: dict[str, Any]) -> None:
    """The seed's task, as written there: one HTTP call per log line."""
    requests.post(f"{LOGGER_URL}/logs", json=payload, timeout=30)
