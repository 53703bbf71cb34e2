"""No tenant key in a line the worker writes, whatever a message's ``kwargsrepr`` says.

Celery logs a task's arguments as its message's ``kwargsrepr`` header gives them (the
"received" line, as ``extra={"data": ...}`` that the JSON formatter writes out); a producer that
does not mask it, or a copy Celery re-published, would put the key there. The worker's handlers
write through ``RedactingFormatter`` (tests/faults/test_worker_dead_letters.py checks the real
worker's log).
"""

from __future__ import annotations

import logging

import pytest

from cloudlog_core.logging_json import JsonFormatter
from cloudlog_wire.payload import redact, task_kwargsrepr
from cloudlog_worker.worker import RedactingFormatter, redact_log_handlers

# Fixed, not random: test ids must be the same in every xdist worker.
KEY = "cl_" + "Kq3_vX9-" * 5 + "abc"
OTHER = "tenant-key-" + "z" * 30  # a key not of ingest's form: masked by name and by value


def record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    made = logging.LogRecord("celery.worker.strategy", logging.INFO, "x", 1, message, args, None)
    for name, value in extra.items():
        setattr(made, name, value)
    return made


@pytest.mark.parametrize(
    "kwargs",
    [
        {"encoding": "zlib+base64", "event_count": 3, "api_key": KEY},
        {"encoding": "zlib+base64", "event_count": 3, "api_key": OTHER},
    ],
)
def test_celerys_received_line_is_written_without_the_key(kwargs: dict[str, object]) -> None:
    data = {"name": "cloudlog.deliver_batch", "id": "t1", "args": "[...]", "kwargs": repr(kwargs)}
    line = RedactingFormatter(JsonFormatter()).format(
        record("Task %(name)s[%(id)s] received", data, data=data)
    )
    assert KEY not in line and OTHER not in line
    assert "received" in line and "api_key" in line


def test_the_workers_own_key_is_masked_wherever_it_appears() -> None:
    worker_key = "w" * 40  # any form at all
    formatter = RedactingFormatter(logging.Formatter("%(message)s"), worker_key)
    assert worker_key not in formatter.format(record("posting with %s", worker_key))


@pytest.mark.parametrize(
    "text",
    [
        f"Authorization: Bearer {KEY}",
        f'{{"api_key": "{OTHER}"}}',
        f"{{'api_key': '{OTHER}'}}",
        f'{{\\"api_key\\": \\"{OTHER}\\"}}',
        f"unknown key {KEY}.",
    ],
)
def test_redact_masks_every_form_a_key_takes(text: str) -> None:
    masked = redact(text)
    assert KEY not in masked and OTHER not in masked


def test_a_kwargsrepr_never_shows_the_key() -> None:
    assert KEY not in task_kwargsrepr({"api_key": KEY, "encoding": "json"})


def test_redact_log_handlers_wraps_every_root_handler_once() -> None:
    root = logging.getLogger()
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    root.addHandler(handler)
    try:
        redact_log_handlers(None)
        redact_log_handlers(None)
        assert isinstance(handler.formatter, RedactingFormatter)
        assert not isinstance(handler.formatter._inner, RedactingFormatter)
        assert KEY not in handler.format(record("key %s", KEY))
    finally:
        root.removeHandler(handler)
