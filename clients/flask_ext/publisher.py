"""Publishes one batch as one Celery task. The Celery app is made lazily, once per process."""

from __future__ import annotations

import os
import threading
from typing import Any

from celery import Celery

from clients.flask_ext.celery_app import DELIVER_TASK_NAME, create_celery
from cloudlog.aws import AwsSettings
from cloudlog.broker import BrokerSettings


class CeleryPublisher:
    def __init__(
        self, broker: BrokerSettings, aws: AwsSettings, api_key: str | None = None
    ) -> None:
        self._kwargs = {"api_key": api_key} if api_key else {}
        self._broker = broker
        self._aws = aws
        self._app: Celery | None = None
        self._pid = os.getpid()
        self._lock = threading.Lock()

    def _celery(self) -> Celery:
        # A connection pool must not cross a fork: a child makes its own.
        if self._app is None or self._pid != os.getpid():
            with self._lock:
                if self._app is None or self._pid != os.getpid():
                    self._app = create_celery(self._broker, self._aws, name="cloudlog-publisher")
                    self._pid = os.getpid()
        return self._app

    def __call__(self, batch: list[dict[str, Any]]) -> None:
        self._celery().send_task(
            DELIVER_TASK_NAME,
            args=[batch],
            kwargs=self._kwargs,
            queue=self._broker.queue_name,
            retry=False,
            # What the worker logs of the task: never the key, nor every event.
            argsrepr=f"[<{len(batch)} events>]",
            kwargsrepr="{'api_key': '***'}" if self._kwargs else "{}",
        )

    def reset_after_fork(self) -> None:
        self._app = None
        self._lock = threading.Lock()
