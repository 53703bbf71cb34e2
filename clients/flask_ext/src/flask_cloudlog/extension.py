"""``CloudLog``: the Flask extension.

Configuration, all optional, as ``CLOUDLOG_*`` keys in ``app.config`` (keyword options to
``CloudLog(...)`` and ``CLOUDLOG_*`` environment variables serve as defaults, in that order):
see ``ExtensionSettings`` and the README's table. ``init_app`` validates them at once, registers
the per-app state at ``app.extensions["cloudlog"]`` and attaches a handler to ``app.logger``.
It does no I/O: the dispatcher thread starts with the first event. Every app in the process
shares that one thread, its broker connection and its exit (delivery.py).

Under test, nothing is shipped: with Flask's ``TESTING`` set and neither
``CLOUDLOG_AWS_ENDPOINT_URL`` nor ``CLOUDLOG_BROKER_URL`` given (or with ``CLOUDLOG_ENABLED`` false
anywhere), events go to a bounded in-memory capture, ``app.extensions["cloudlog"].captured``,
instead of the queue. ``CLOUDLOG_ENABLED = True`` delivers under test as well.

``app.extensions["cloudlog"].stats()`` gives the buffer's depth and what was dropped and
published; ``.register_metrics(registry=None)`` shows the same to Prometheus (metrics.py).
"""

from __future__ import annotations

import logging
import re
import socket
import time
import weakref
from collections import deque
from typing import TYPE_CHECKING, Any

from flask import Flask, current_app
from pydantic import ValidationError

from cloudlog_core.names import relative_group_problem, stream_problem
from flask_cloudlog.buffer import BufferStats, EventBuffer
from flask_cloudlog.delivery import ProcessDispatcher, process_dispatcher
from flask_cloudlog.dispatcher import Dispatcher
from flask_cloudlog.events import json_safe, make_event, request_fields
from flask_cloudlog.handler import CloudLogHandler
from flask_cloudlog.metrics import register_state
from flask_cloudlog.publisher import CeleryPublisher
from flask_cloudlog.settings import ExtensionSettings

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

EXTENSION_KEY = "cloudlog"
# Events kept by the in-memory capture (delivery off); the oldest go first. A test suite reads a
# few dozen; this bounds what a long test run (or a process with CLOUDLOG_ENABLED=False) keeps.
CAPTURE_MAX_EVENTS = 10_000
logger = logging.getLogger(__name__)
_said_capture = False


class CloudLogConfigError(ValueError):
    """A ``CLOUDLOG_*`` setting is invalid."""


def _default_log_group(app: Flask) -> str:
    name = re.sub(r"[^.\-_#A-Za-z0-9]", "-", app.name)
    name = re.sub(r"\.{2,}", ".", name).strip("-.") or "app"
    return f"cloudlog/{name}"


def name_problem(log_group: str | None, log_stream: str | None) -> tuple[str, str] | None:
    """("log_group" or "log_stream", the rule it breaks) for the first name ingest would refuse
    whatever the tenant's prefix (cloudlog_core.names), or None. Names are shipped as given:
    ingest maps them under the prefix (a leading "/" means the same name relative to it)."""
    if log_group is not None and (problem := relative_group_problem(log_group)) is not None:
        return "log_group", problem
    if log_stream is not None and (problem := stream_problem(log_stream)) is not None:
        return "log_stream", problem
    return None


def _describe(refused: tuple[str, str], name: str | None) -> str:
    """ "log group '/a/../b' may not contain '..' or '.' segments" """
    return f"{refused[0].replace('_', ' ')} {name!r} {refused[1]}"


def _default_log_stream() -> str:
    return socket.gethostname().replace(":", "-").replace("*", "-") or "default"


class CloudLogState:
    """Everything cloudlog keeps for one app."""

    def __init__(
        self,
        settings: ExtensionSettings,
        publisher: Any = None,
        *,
        app_name: str = "",
        deliver: bool = True,
        runner: ProcessDispatcher | None = None,
    ) -> None:
        """``deliver``: False keeps events in :attr:`captured` and publishes nothing.
        ``runner``: the thread that drains this app's buffer (default: the process's one)."""
        self.settings = settings
        self.app_name = app_name
        self.log_stream = settings.log_stream or _default_log_stream()
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
        self.handler = CloudLogHandler(self, level=settings.level)
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
                "cloudlog: buffer full (%s), events are being dropped; "
                "see app.extensions['cloudlog'].stats()",
                self.settings.overflow_policy.value,
            )

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
        if level_name not in ("debug", "info", "warning", "error", "critical"):
            raise ValueError(f"unknown level {level!r}")
        if (refused := name_problem(log_group or None, log_stream or None)) is not None:
            name = log_group if refused[0] == "log_group" else log_stream
            raise ValueError(f"{refused[0]}: {_describe(refused, name)}")
        event_fields = request_fields()
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

    def register_metrics(self, registry: CollectorRegistry | None = None) -> None:
        """Show :meth:`stats` to Prometheus, read at each scrape, labelled ``app=<app name>``.

        ``registry``: default prometheus_client's global one (what ``make_wsgi_app()`` and
        ``start_http_server()`` serve unless told otherwise). Registering the same app again
        replaces it; several apps share one registry, one label value each.
        """
        register_state(self, self.app_name, registry)


def delivery_wanted(app: Flask, settings: ExtensionSettings) -> bool:
    """``CLOUDLOG_ENABLED`` if set; else on, except under ``TESTING`` with no endpoint or broker
    given (in ``app.config``, as an option or in the environment)."""
    if settings.enabled is not None:
        return settings.enabled
    explicit = settings.aws_endpoint_url or settings.broker_url
    return not (app.config.get("TESTING") and not explicit)


ATTACHED_BY_INIT_APP = "_cloudlog_attached_by_init_app"


def _say_capture_once(app: Flask) -> None:
    global _said_capture
    if not _said_capture:
        _said_capture = True
        logger.debug(
            "cloudlog: delivery off for %s (TESTING and no CLOUDLOG_AWS_ENDPOINT_URL or "
            "CLOUDLOG_BROKER_URL, or CLOUDLOG_ENABLED=False): events are kept in "
            "app.extensions['cloudlog'].captured; CLOUDLOG_ENABLED=True delivers them",
            app.name,
        )


class CloudLog:
    """The Flask extension. ``CloudLog(app)`` or ``CloudLog()`` then ``init_app(app)``.

    Keyword options are defaults for the ``CLOUDLOG_*`` keys: ``CloudLog(log_group="shop")``
    sets ``CLOUDLOG_LOG_GROUP`` unless ``app.config`` already has it.
    """

    def __init__(self, app: Flask | None = None, **options: Any) -> None:
        known = set(ExtensionSettings.model_fields)
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(f"unknown CloudLog option(s): {', '.join(unknown)}")
        self._options = options
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        if EXTENSION_KEY in app.extensions:
            raise RuntimeError("CloudLog is already initialised on this app")
        for name, value in self._options.items():
            app.config.setdefault(f"CLOUDLOG_{name.upper()}", value)
        settings = self._settings_from_config(app)
        deliver = delivery_wanted(app, settings)
        settings = settings.model_copy(update={"enabled": deliver})
        for key, name in ExtensionSettings.config_keys().items():
            app.config.setdefault(key, getattr(settings, name))
        state = CloudLogState(settings, app_name=app.name, deliver=deliver)
        app.extensions[EXTENSION_KEY] = state
        if not deliver:
            _say_capture_once(app)
        if CloudLogHandler._default_state is None:
            CloudLogHandler._default_state = state
        if settings.attach_to_app_logger:
            # Apps of one name share their logger (logging.getLogger(app.name)): an app factory
            # run once per test would stack one handler per app on it, each shipping every line
            # again and keeping its app alive. The newest app's handler replaces the others.
            for old in list(app.logger.handlers):
                if getattr(old, ATTACHED_BY_INIT_APP, False):
                    app.logger.removeHandler(old)
            setattr(state.handler, ATTACHED_BY_INIT_APP, True)
            app.logger.addHandler(state.handler)
            wanted = logging.getLevelName(settings.level)
            if app.logger.getEffectiveLevel() > wanted:
                app.logger.setLevel(wanted)

    @staticmethod
    def _settings_from_config(app: Flask) -> ExtensionSettings:
        given = {
            name: app.config[key]
            for key, name in ExtensionSettings.config_keys().items()
            if key in app.config
        }
        try:
            settings = ExtensionSettings(**given)
        except (ValidationError, ValueError) as exc:
            raise CloudLogConfigError(f"invalid cloudlog configuration: {exc}") from exc
        group = settings.log_group or _default_log_group(app)
        # Names ingest would refuse for any tenant: refused here, not dead-lettered later.
        refused = name_problem(group, settings.log_stream or None)
        if refused is not None:
            key = f"CLOUDLOG_{refused[0].upper()}"
            value = group if refused[0] == "log_group" else settings.log_stream
            raise CloudLogConfigError(
                f"invalid cloudlog configuration: {key}: {_describe(refused, value)}"
            )
        return settings.model_copy(update={"log_group": group})

    @staticmethod
    def state() -> CloudLogState:
        """The current app's state; a clear error when ``init_app`` was not called."""
        state: CloudLogState | None = current_app.extensions.get(EXTENSION_KEY)
        if state is None:
            raise RuntimeError("CloudLog.init_app(app) was not called for the current app")
        return state

    def log(self, level: str, message: str, **kwargs: Any) -> None:
        self.state().log(level, message, **kwargs)

    def flush(self, timeout: float | None = None) -> bool:
        return self.state().flush(timeout)
