"""Publishes one encoded batch as one Celery task.

The Celery app (and so its broker connection pool) is made once per process per broker: every
app's publisher with the same broker and AWS settings shares it; each sends its own API key.
"""

from __future__ import annotations

import os
import threading

from celery import Celery

from cloudlog_core.aws import AwsSettings
from cloudlog_wire.broker import BrokerSettings
from cloudlog_wire.celery_app import DELIVER_TASK_NAME, create_celery
from cloudlog_wire.payload import EncodedBatch, task_kwargs

_celery_apps: dict[tuple[str, str], Celery] = {}
_celery_apps_lock = threading.Lock()


def shared_celery(broker: BrokerSettings, aws: AwsSettings) -> Celery:
    """The process's Celery app for this broker, made (no I/O) on first use."""
    key = (broker.model_dump_json(), aws.model_dump_json())
    app = _celery_apps.get(key)
    if app is None:
        with _celery_apps_lock:
            app = _celery_apps.get(key)
            if app is None:
                app = _celery_apps[key] = create_celery(broker, aws, name="cloudlog-publisher")
    return app


def _forget_celery_apps_in_child() -> None:
    """A connection pool must not cross a fork: a child makes its own."""
    global _celery_apps_lock
    _celery_apps.clear()
    _celery_apps_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_celery_apps_in_child)


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
                    self._app = shared_celery(self._broker, self._aws)
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
