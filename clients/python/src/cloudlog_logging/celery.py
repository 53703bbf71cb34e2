"""Your own Celery app's task logs, shipped with the task's name and id as fields.

    from celery import Celery
    from cloudlog_logging.celery import ship_task_logs

    app = Celery("shop", broker=...)
    ship_task_logs(app)                          # CLOUDLOG_* from the environment
    ship_task_logs(app, log_group="shop/tasks")  # or any CloudLogHandler option

In the worker, a ``CloudLogHandler`` is put on the root logger and on Celery's task logger
(``get_task_logger`` loggers do not propagate to the root) once Celery has set up its logging
(it replaces the root logger's handlers at start unless ``worker_hijack_root_logger`` is off),
and ``task_name`` and ``task_id`` are bound in the context (context.py) while each task of
``app`` runs: every line the task logs carries them.
Each pool process flushes what it buffered when it exits (``worker_process_shutdown``).
This is for the user's app; cloudlog's own worker never ships its logs through cloudlog.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    task_postrun,
    task_prerun,
    worker_process_shutdown,
)

from cloudlog_logging.context import BOUND, Bound
from cloudlog_logging.delivery import process_dispatcher
from cloudlog_logging.handler import CloudLogHandler


class TaskLogShipping:
    """What ``ship_task_logs`` connects for one Celery app: kept alive by the signals."""

    def __init__(self, app: Celery, handler: CloudLogHandler | None, options: dict[str, Any]):
        self.app = app
        self.handler = handler
        self.options = options
        # task id -> the binding to undo when it ends (prerun and postrun run in one thread).
        self._bound: dict[str, Bound] = {}

    def _handler(self) -> CloudLogHandler:
        if self.handler is None:
            self.handler = CloudLogHandler(**self.options)
        return self.handler

    def attach(self, logger: logging.Logger | None = None, **_: Any) -> None:
        """Put the handler on ``logger`` (the root logger, or Celery's task logger: the
        after_setup_logger and after_setup_task_logger signals hand them over)."""
        target = logger or logging.getLogger()
        handler = self._handler()
        if handler not in target.handlers:
            target.addHandler(handler)

    def _ours(self, task: Any) -> bool:
        return task is not None and getattr(task, "app", None) is self.app

    def started(self, task_id: str | None = None, task: Any = None, **_: Any) -> None:
        if not self._ours(task) or task_id is None:
            return
        fields = {"task_name": task.name, "task_id": task_id}
        self._bound[task_id] = Bound(BOUND.set({**BOUND.get(), **fields}))

    def finished(self, task_id: str | None = None, task: Any = None, **_: Any) -> None:
        bound = self._bound.pop(task_id, None) if task_id is not None else None
        if bound is None:
            return
        try:
            bound.reset()
        except ValueError:  # reset in another context than it was set in: forget the fields
            BOUND.set({k: v for k, v in BOUND.get().items() if k not in ("task_name", "task_id")})

    @staticmethod
    def flush(**_: Any) -> None:
        """A pool process ends: publish what it buffered (within CLOUDLOG_SHUTDOWN_TIMEOUT)."""
        process_dispatcher().close()


def ship_task_logs(
    app: Celery, handler: CloudLogHandler | None = None, **options: Any
) -> TaskLogShipping:
    """Ship the logs of ``app``'s worker, with ``task_name`` and ``task_id`` on task lines.

    ``handler``: the ``CloudLogHandler`` to put on the root logger (default: one made in the
    worker with ``options``, else ``CLOUDLOG_*`` environment variables). Lines logged in the
    calling process are not shipped by this call: attach a handler there too if they should be.
    """
    shipping = TaskLogShipping(app, handler, options)
    uid = f"cloudlog-{id(app)}"
    after_setup_logger.connect(shipping.attach, weak=False, dispatch_uid=f"{uid}-setup")
    # Celery's task loggers (get_task_logger) do not propagate to the root logger.
    after_setup_task_logger.connect(shipping.attach, weak=False, dispatch_uid=f"{uid}-tasks")
    task_prerun.connect(shipping.started, weak=False, dispatch_uid=f"{uid}-prerun")
    task_postrun.connect(shipping.finished, weak=False, dispatch_uid=f"{uid}-postrun")
    worker_process_shutdown.connect(shipping.flush, weak=False, dispatch_uid=f"{uid}-exit")
    return shipping
