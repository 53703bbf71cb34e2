"""What the writer tells whoever watches it: each PutLogEvents call and each retry.

The writer knows nothing of Prometheus; ingest implements :class:`WriterObserver` over its
metrics (services/ingest/metrics.py). Calls come from the writer's threads, so an observer must
be thread-safe, and cheap: it runs on the write path.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Protocol

# The ``outcome`` of a PutLogEvents call that got an answer without an error.
PUT_OK = "ok"


class RetryCause(StrEnum):
    """Why a batch was tried again. Stable strings: they become metric labels."""

    THROTTLED = "throttled"  # ThrottlingException and the like, or HTTP 429
    SERVER_ERROR = "server_error"  # 5xx, ServiceUnavailable, InternalFailure, timeouts answered
    CONNECTION = "connection"  # unreachable, connect/read timeout, connection reset
    NOT_FOUND = "not_found"  # group or stream gone (or cache stale): created again
    SEQUENCE_TOKEN = "sequence_token"  # a legacy endpoint asked for another sequence token


class WriterObserver(Protocol):
    def put_log_events(self, *, events: int, seconds: float, outcome: str) -> None:
        """One PutLogEvents call of ``events`` events took ``seconds``; ``outcome`` is
        :data:`PUT_OK` or the error's kind (``ErrorKind`` value: ``retriable``, ...)."""

    def retry(self, cause: RetryCause) -> None:
        """A batch is about to be tried again."""


class NullObserver:
    """Watches nothing: the default."""

    def put_log_events(self, *, events: int, seconds: float, outcome: str) -> None:
        return None

    def retry(self, cause: RetryCause) -> None:
        return None
