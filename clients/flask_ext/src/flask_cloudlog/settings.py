"""Settings of the Flask extension: ``CLOUDLOG_*`` keys in ``app.config``, else the environment.

Every producer setting is cloudlog_logging's (``ClientSettings``); the extension adds its own.
"""

from __future__ import annotations

from cloudlog_logging.settings import (
    DEFAULT_MAX_BATCH_BYTES,
    DEFAULT_MAX_TASK_BYTES,
    LOGGING_LEVEL_NAMES,
    MAX_BATCH_BYTES,
    MAX_BATCH_EVENTS,
    ClientSettings,
    OverflowPolicy,
)

__all__ = [
    "DEFAULT_MAX_BATCH_BYTES",
    "DEFAULT_MAX_TASK_BYTES",
    "LOGGING_LEVEL_NAMES",
    "MAX_BATCH_BYTES",
    "MAX_BATCH_EVENTS",
    "ExtensionSettings",
    "OverflowPolicy",
]


class ExtensionSettings(ClientSettings):
    """Every ``CLOUDLOG_*`` key the extension reads, with its default."""

    attach_to_app_logger: bool = True
