"""Fields bound to the current context, added to every line logged in it.

Kept in a ``contextvars.ContextVar``: each thread has its own, each asyncio task a copy of its
creator's, so fields bound for one request, task or job never show on another's lines.

    from cloudlog_logging import context

    context.bind(job="nightly")             # from here on in this context
    with context.bind(order_id=42):         # or only inside the block
        log.info("charged")                 # fields: job, order_id

The ASGI middleware binds ``request_id``, ``path`` and ``method`` for a request's duration
(asgi.py); ``ship_task_logs`` binds ``task_name`` and ``task_id`` for a Celery task's (celery.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar, Token
from types import MappingProxyType, TracebackType
from typing import Any

from cloudlog_logging.values import json_safe

EMPTY: Mapping[str, Any] = MappingProxyType({})
# Never mutated in place: each change sets a new mapping, so a context copied into a thread or
# a task keeps what it was given.
BOUND: ContextVar[Mapping[str, Any]] = ContextVar("cloudlog_bound_fields", default=EMPTY)


class Bound:
    """What ``bind``, ``unbind`` and ``clear`` return: as a context manager, undone at the end
    of the ``with`` block; otherwise it stays for the rest of the current context."""

    def __init__(self, token: Token[Mapping[str, Any]]) -> None:
        self._token = token

    def __enter__(self) -> Bound:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.reset()

    def reset(self) -> None:
        """Restore the fields bound before this call."""
        BOUND.reset(self._token)


def bind(**fields: Any) -> Bound:
    """Add ``fields`` (made JSON-safe) to every line logged in the current context."""
    safe = {name: json_safe(value) for name, value in fields.items()}
    return Bound(BOUND.set({**BOUND.get(), **safe}))


def unbind(*names: str) -> Bound:
    """Stop adding the fields ``names``."""
    return Bound(BOUND.set({k: v for k, v in BOUND.get().items() if k not in names}))


def clear() -> Bound:
    """No bound fields from here on (in this context)."""
    return Bound(BOUND.set(EMPTY))


def bound_fields() -> dict[str, Any]:
    """The fields bound now, as a new dict."""
    return dict(BOUND.get())
