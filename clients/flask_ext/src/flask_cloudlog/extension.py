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
from typing import TYPE_CHECKING, Any

from flask import Flask, current_app
from pydantic import ValidationError

from cloudlog_logging.delivery import ProcessDispatcher
from cloudlog_logging.publisher import CeleryPublisher
from cloudlog_logging.settings import CloudLogConfigError
from cloudlog_logging.state import (
    CAPTURE_MAX_EVENTS,
    LogShipper,
    default_log_stream,
    name_problem,
    refuse_configured_names,
)
from flask_cloudlog.events import request_fields
from flask_cloudlog.handler import CloudLogHandler
from flask_cloudlog.metrics import register_state
from flask_cloudlog.settings import ExtensionSettings

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = [
    "CAPTURE_MAX_EVENTS",
    "CloudLog",
    "CloudLogConfigError",
    "CloudLogState",
    "delivery_wanted",
    "name_problem",
]

EXTENSION_KEY = "cloudlog"
logger = logging.getLogger(__name__)
_said_capture = False


def _default_log_group(app: Flask) -> str:
    name = re.sub(r"[^.\-_#A-Za-z0-9]", "-", app.name)
    name = re.sub(r"\.{2,}", ".", name).strip("-.") or "app"
    return f"cloudlog/{name}"


class CloudLogState(LogShipper):
    """Everything cloudlog keeps for one app: a ``LogShipper`` (buffer, dispatcher, capture,
    counters; cloudlog_logging.state) with the app's handler, request fields and metrics."""

    stats_hint = "app.extensions['cloudlog'].stats()"

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
        publisher = publisher or CeleryPublisher(
            settings.broker(), settings.aws(), settings.api_key
        )
        super().__init__(settings, publisher, deliver=deliver, runner=runner)
        self.settings: ExtensionSettings = settings
        self.app_name = app_name
        self.handler = CloudLogHandler(self, level=settings.level)

    def base_fields(self) -> dict[str, Any]:
        """The current request's fields, as the handler ships them (cloudlog_logging's bound
        context is not read on the Flask path: it would cost every request's log call)."""
        return request_fields()

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
        # Effective values go back to app.config: the stream too, when it defaulted.
        effective = {"enabled": deliver, "log_stream": settings.log_stream or default_log_stream()}
        settings = settings.model_copy(update=effective)
        for key, name in ExtensionSettings.config_keys().items():
            if app.config.get(key) is None:
                app.config[key] = getattr(settings, name)
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
        refuse_configured_names(group, settings.log_stream)
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
