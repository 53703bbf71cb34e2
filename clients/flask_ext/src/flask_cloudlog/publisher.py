"""Publishes one encoded batch as one Celery task; the Celery app is made once per process."""

from __future__ import annotations

import os
import threading

from celery import Celery

from cloudlog_core.aws import AwsSettings
from cloudlog_wire.broker import BrokerSettings
from cloudlog_wire.celery_app import DELIVER_TASK_NAME, create_celery
from cloudlog_wire.payload import EncodedBatch, task_kwargs


class CeleryPublisher:
    def __init__(
        self, broker: BrokerSettings, aws: AwsSettings, api_key: str | None = None
    ) -> None:
        self._api_key = api_key
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

    def __call__(self, batch: EncodedBatch) -> None:
        kwargs = task_kwargs(batch.encoding, batch.count, self._api_key)
        shown = {**kwargs, "api_key": "***"} if "api_key" in kwargs else kwargs
        self._celery().send_task(
            DELIVER_TASK_NAME,
            args=[batch.data],
            kwargs=kwargs,
            queue=self._broker.queue_name,
            retry=False,
            # What the worker logs of the task: never the key, nor the payload.
            argsrepr=f"[<{batch.count} events, {batch.encoding}>]",
            kwargsrepr=repr(shown),
        )

    def reset_after_fork(self) -> None:
        self._app = None
        self._lock = threading.Lock()
