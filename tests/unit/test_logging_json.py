"""The services' JSON log lines: one object a line, with extras, exceptions and access fields."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import textwrap
from typing import Any

from cloudlog_core.logging_json import JsonFormatter

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def record(
    message: str, *args: Any, name: str = "svc", level: int = logging.INFO, **extra: Any
) -> logging.LogRecord:
    made = logging.getLogger(name).makeRecord(name, level, "f.py", 1, message, args, None)
    for key, value in extra.items():
        setattr(made, key, value)
    return made


def formatted(made: logging.LogRecord) -> dict[str, Any]:
    line = JsonFormatter().format(made)
    assert "\n" not in line
    document: dict[str, Any] = json.loads(line)
    return document


def test_core_fields_then_extras_on_one_line() -> None:
    document = formatted(record("a %s\nb", "ü", level=logging.WARNING, tenant="acme", n=3))
    assert list(document)[:4] == ["timestamp", "level", "logger", "message"]
    assert TIMESTAMP.match(document["timestamp"])
    assert document["level"] == "warning"
    assert document["logger"] == "svc"
    assert document["message"] == "a ü\nb"
    assert (document["tenant"], document["n"]) == ("acme", 3)


def test_an_extra_never_hides_a_core_field_and_odd_values_become_text() -> None:
    document = formatted(record("m", level=logging.ERROR, logger="x", thing=object()))
    assert document["logger"] == "svc" and document["extra.logger"] == "x"
    assert document["thing"].startswith("<object object")


def test_exceptions_carry_their_traceback() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        made = logging.getLogger("svc").makeRecord(
            "svc", logging.ERROR, "f.py", 1, "failed", (), sys.exc_info()
        )
    document = formatted(made)
    assert document["message"] == "failed"
    assert document["exception"].startswith("Traceback (most recent call last)")
    assert "ValueError: boom" in document["exception"]


def test_uvicorn_access_lines_are_structured() -> None:
    made = record(
        '%s - "%s %s HTTP/%s" %d',
        "127.0.0.1:5000",
        "POST",
        "/v1/logs",
        "1.1",
        401,
        name="uvicorn.access",
        color_message="\x1b[1m...",
    )
    document = formatted(made)
    assert document["message"] == '127.0.0.1:5000 - "POST /v1/logs HTTP/1.1" 401'
    assert (document["method"], document["path"], document["status"]) == ("POST", "/v1/logs", 401)
    assert "color_message" not in document


def test_configured_process_writes_only_json_lines_on_stdout() -> None:
    script = textwrap.dedent(
        """
        import logging, logging.config, warnings
        from cloudlog_core.logging_json import configure_json_logging
        configure_json_logging("info")
        logging.getLogger("uvicorn.error").info("Started server process")
        logging.getLogger("uvicorn.access").info('%s - "%s %s HTTP/%s" %d',
                                                 "c", "GET", "/healthz", "1.1", 200)
        logging.getLogger("deep.down").debug("not shown at info")
        logging.getLogger("deep.down").info("journal: recovered 1 unfinished commit(s): 2")
        warnings.warn("careful")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=True
    )
    documents = [json.loads(line) for line in result.stdout.splitlines()]
    assert [d["logger"] for d in documents] == [
        "uvicorn.error",
        "uvicorn.access",
        "deep.down",
        "py.warnings",
    ], "each record once, nothing below the level"
    assert "journal: recovered 1 unfinished commit(s)" in result.stdout
    assert "careful" in documents[-1]["message"]
    assert result.stderr == ""
