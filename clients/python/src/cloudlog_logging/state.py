"""``LogShipper``: one producer's buffer, dispatcher and counters, with no framework.

A Flask app's state (flask_cloudlog.CloudLogState) is one; so is each ``CloudLogHandler`` made
for a plain process (handler.py). Every shipper in the process is drained by the one dispatcher
thread (delivery.py), which flushes them all at exit within ``CLOUDLOG_SHUTDOWN_TIMEOUT``.
"""

from __future__ import annotations

import logging
import socket
import time
import weakref
from collections import deque
from typing import Any

from cloudlog_core.names import relative_group_problem, stream_problem
from cloudlog_logging.buffer import BufferStats, EventBuffer
from cloudlog_logging.context import BOUND
from cloudlog_logging.delivery import ProcessDispatcher, process_dispatcher
from cloudlog_logging.dispatcher import Dispatcher
from cloudlog_logging.events import make_event
from cloudlog_logging.publisher import CeleryPublisher
from cloudlog_logging.settings import ClientSettings, CloudLogConfigError
from cloudlog_logging.values import json_safe

# Events kept by the in-memory capture (delivery off); the oldest go first. A test suite reads a
# few dozen; this bounds what a long test run (or a process with CLOUDLOG_ENABLED=False) keeps.
CAPTURE_MAX_EVENTS = 10_000
LEVELS = ("debug", "info", "warning", "error", "critical")
logger = logging.getLogger(__name__)


def name_problem(log_group: str | None, log_stream: str | None) -> tuple[str, str] | None:
    """("log_group" or "log_stream", the rule it breaks) for the first name ingest would refuse
    whatever the tenant's prefix (cloudlog_core.names), or None. Names are shipped as given:
    ingest maps them under the prefix (a leading "/" means the same name relative to it)."""
    if log_group is not None and (problem := relative_group_problem(log_group)) is not None:
        return "log_group", problem
    if log_stream is not None and (problem := stream_problem(log_stream)) is not None:
        return "log_stream", problem
    return None


def describe(refused: tuple[str, str], name: str | None) -> str:
    """ "log group '/a/../b' may not contain '..' or '.' segments" """
    return f"{refused[0].replace('_', ' ')} {name!r} {refused[1]}"


def refuse_configured_names(log_group: str, log_stream: str | None) -> None:
    """``CloudLogConfigError`` naming the CLOUDLOG_* key and the rule, for a configured group or
    stream ingest would refuse: refused at configuration, not dead-lettered later."""
    refused = name_problem(log_group, log_stream or None)
    if refused is not None:
        key = f"CLOUDLOG_{refused[0].upper()}"
        value = log_group if refused[0] == "log_group" else log_stream
        raise CloudLogConfigError(
            f"invalid cloudlog configuration: {key}: {describe(refused, value)}"
        )


def default_log_stream() -> str:
    return socket.gethostname().replace(":", "-").replace("*", "-") or "default"


class LogShipper:
    """Everything cloudlog keeps for one producer: buffer, dispatcher, capture, counters."""

    # Where a user reads the counters, named in the one warning about dropped events.
    stats_hint = "stats()"

    def __init__(
        self,
        settings: ClientSettings,
        publisher: Any = None,
        *,
        deliver: bool = True,
        runner: ProcessDispatcher | None = None,
    ) -> None:
        """``deliver``: False keeps events in :attr:`captured` and publishes nothing.
        ``runner``: the thread that drains this buffer (default: the process's one)."""
        self.settings = settings
        self.log_stream = settings.log_stream or default_log_stream()
        self.buffer = EventBuffer(
            max_events=settings.buffer_max_events,
            max_bytes=settings.buffer_max_bytes,
            policy=settings.overflow_policy,
            block_timeout=settings.block_timeout,
        )
        self.publisher = publisher or CeleryPublisher(
            settings.broker(), settings.aws(), settings.api_key
        )
        self.delivering = deliver
        self._capture: deque[dict[str, Any]] | None = (
            None if deliver else deque(maxlen=CAPTURE_MAX_EVENTS)
        )
        runner = runner or process_dispatcher()
        self.dispatcher = Dispatcher(
            self.buffer,
            self.publisher,
            batch_max_events=settings.batch_max_events,
            max_task_bytes=settings.max_task_bytes,
            flush_interval=settings.flush_interval,
            publish_retry_max_seconds=settings.publish_retry_max_seconds,
            max_batch_bytes=settings.max_batch_bytes,
            compression=settings.task_compression,
            api_key=settings.api_key,
            runner=runner,
        )
        if deliver:
            runner.register(self.dispatcher, settings.shutdown_timeout)
            # Once this state is collected its dispatcher leaves the runner (its lines first).
            weakref.finalize(self, runner.forget, self.dispatcher).atexit = False
        self._wake_at = settings.batch_max_events
        self.empty_messages = 0
        self._warned_drop = False
        self._closed = False

    def accept(self, event: dict[str, Any]) -> None:
        """Take one event from the request path: buffer it and make sure the dispatcher runs."""
        if self._closed:
            return
        if not event["message"]:
            # CloudWatch refuses empty messages (PutLogEvents: message length >= 1).
            self.empty_messages += 1
            return
        if self._capture is not None:
            self._capture.append(event)
            return
        kept = self.buffer.put(event, wake_at=self._wake_at)
        self.dispatcher.ensure_started()
        if not kept and not self._warned_drop:
            self._warned_drop = True
            logger.warning(
                "cloudlog: buffer full (%s), events are being dropped; see %s",
                self.settings.overflow_policy.value,
                self.stats_hint,
            )

    def base_fields(self) -> dict[str, Any]:
        """The fields every line logged with :meth:`log` starts with: the context's."""
        return dict(BOUND.get())

    def log(
        self,
        level: str,
        message: str,
        *,
        log_group: str | None = None,
        log_stream: str | None = None,
        **fields: Any,
    ) -> None:
        """Log one line directly, optionally to another group or stream, with structured fields."""
        level_name = level.lower()
        if level_name not in LEVELS:
            raise ValueError(f"unknown level {level!r}")
        if (refused := name_problem(log_group or None, log_stream or None)) is not None:
            name = log_group if refused[0] == "log_group" else log_stream
            raise ValueError(f"{refused[0]}: {describe(refused, name)}")
        event_fields = self.base_fields()
        event_fields.update({key: json_safe(value) for key, value in fields.items()})
        self.accept(
            make_event(
                message=message,
                level=level_name,
                timestamp_ms=int(time.time() * 1000),
                logger=None,
                log_group=log_group or self.log_group,
                log_stream=log_stream or self.log_stream,
                fields=event_fields,
            )
        )

    @property
    def log_group(self) -> str:
        return self.settings.log_group or ""

    @property
    def captured(self) -> list[dict[str, Any]]:
        """With delivery off: the events logged so far (the last ``CAPTURE_MAX_EVENTS``), oldest
        first, exactly as they would be shipped: ``log_group``, ``log_stream``, ``message``,
        ``level``, ``logger``, ``timestamp``, ``event_id`` and ``fields``. Empty when delivering."""
        return [] if self._capture is None else list(self._capture)

    def clear_captured(self) -> None:
        if self._capture is not None:
            self._capture.clear()

    def flush(self, timeout: float | None = None) -> bool:
        """Publish everything logged so far. True if the buffer emptied within the timeout."""
        if len(self.buffer) and not self.dispatcher.is_running:
            self.dispatcher.ensure_started()
        return self.dispatcher.flush(self.settings.shutdown_timeout if timeout is None else timeout)

    def close(self) -> bool:
        """Publish what is left (within ``CLOUDLOG_SHUTDOWN_TIMEOUT``) and stop. Idempotent."""
        if self._closed:
            return True
        self._closed = True
        return self.dispatcher.close(self.settings.shutdown_timeout)

    def stats(self) -> dict[str, int]:
        buffered: BufferStats = self.buffer.stats()
        return {
            "buffered_events": buffered.depth,
            "buffered_bytes": buffered.bytes,
            "accepted_events": buffered.accepted,
            "dropped_events": buffered.dropped,
            "empty_messages": self.empty_messages,
            "published_events": self.dispatcher.published_events,
            "published_tasks": self.dispatcher.published_tasks,
            "publish_failures": self.dispatcher.publish_failures,
            "abandoned_events": self.dispatcher.abandoned_events,
        }
