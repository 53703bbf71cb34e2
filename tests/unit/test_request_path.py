"""The request path: what a log call inside a Flask request ships, now that per-request and
per-logger work is done once (request fields on ``g``, exclusions memoised, no handler lock)."""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from flask import Flask

from flask_cloudlog import CloudLogState
from flask_cloudlog.handler import EXCLUSION_MEMO_MAX, _exclusion_memo, is_excluded
from tests.unit.test_extension import RecordingPublisher, make_state, unique_name


def app_with_state(**overrides: Any) -> tuple[Flask, CloudLogState, RecordingPublisher]:
    app = Flask(unique_name())
    state, publisher = make_state(**overrides)
    app.extensions["cloudlog"] = state
    app.logger.addHandler(state.handler)
    app.logger.setLevel(logging.DEBUG)
    app.logger.propagate = False
    return app, state, publisher


def shipped(state: CloudLogState, publisher: RecordingPublisher) -> list[dict[str, Any]]:
    assert state.flush(5)
    state.close()
    return publisher.events


def test_each_request_gets_its_own_fields_even_inside_one_app_context() -> None:
    """Requests pushed inside one app context share ``g``: the cache must not leak across."""
    app, state, publisher = app_with_state()
    with app.app_context():
        with app.test_request_context("/a", method="POST", headers={"X-Request-ID": "r1"}):
            app.logger.info("one")
            app.logger.info("two", extra={"n": 1})
        with app.test_request_context("/b", method="GET"):
            app.logger.info("three")
    one, two, three = shipped(state, publisher)
    assert one["fields"] == {"request_id": "r1", "path": "/a", "method": "POST"}
    assert two["fields"] == {"request_id": "r1", "path": "/a", "method": "POST", "n": 1}
    assert (three["fields"]["path"], three["fields"]["method"]) == ("/b", "GET")


def test_requests_get_ids_of_their_own_and_events_no_shared_fields() -> None:
    app, state, publisher = app_with_state()

    @app.get("/x")
    def view() -> str:
        app.logger.info("first", extra={"only_here": True})
        app.logger.info("second")
        return "ok"

    client = app.test_client()
    client.get("/x")
    client.get("/x", headers={"X-Request-ID": "given"})
    first, second, third, fourth = shipped(state, publisher)
    assert first["fields"]["request_id"] == second["fields"]["request_id"] != "given"
    assert third["fields"]["request_id"] == fourth["fields"]["request_id"] == "given"
    assert "only_here" not in second["fields"], "an extra of one record leaked into the next"
    assert first["fields"]["only_here"] is True


def test_extras_keep_their_order_and_formatter_attributes_are_not_shipped() -> None:
    app, state, publisher = app_with_state()
    formatted = logging.Handler()
    formatted.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    formatted.emit = lambda record: formatted.format(record)  # type: ignore[method-assign]
    app.logger.handlers.insert(0, formatted)  # sets record.message and record.asctime first
    app.logger.info("hello %s", "you", extra={"z": 1, "a": [1, {2}], "_private": 3})
    app.logger.info("plain")
    app.logger.removeHandler(formatted)
    hello, plain = shipped(state, publisher)
    assert hello["message"] == "hello you"
    assert list(hello["fields"]) == ["z", "a"] and hello["fields"]["a"] == [1, [2]]
    assert "fields" not in plain


def test_the_exclusion_memo_is_right_and_bounded() -> None:
    assert is_excluded("botocore.endpoint") and is_excluded("celery")
    assert not is_excluded("botocorex") and not is_excluded("shop.views")
    for n in range(EXCLUSION_MEMO_MAX * 3):
        assert is_excluded(f"kombu.dyn{n}") and not is_excluded(f"app.dyn{n}")
    assert len(_exclusion_memo) <= EXCLUSION_MEMO_MAX
    assert is_excluded("urllib3.connectionpool") and not is_excluded("urllib")


def test_a_log_call_made_while_shipping_one_is_not_shipped_again() -> None:
    app, state, publisher = app_with_state()

    class LoggingFilter(logging.Filter):
        """Logs through the same logger while cloudlog handles a record."""

        def filter(self, record: logging.LogRecord) -> bool:
            if record.getMessage() == "outer":
                app.logger.info("inner")
            return True

    state.handler.addFilter(LoggingFilter())
    app.logger.info("outer")
    assert [e["message"] for e in shipped(state, publisher)] == ["inner", "outer"]


def test_threads_log_at_once_without_the_handler_lock_and_nothing_is_lost() -> None:
    app, state, publisher = app_with_state(buffer_max_events=100_000)

    def work(n: int) -> None:
        with app.test_request_context(f"/t{n}"):
            for line in range(500):
                app.logger.info("t%d line %d", n, line)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    events = shipped(state, publisher)
    assert len(events) == 4_000 == len({e["event_id"] for e in events})
    for n in range(8):
        mine = [e["message"] for e in events if e["fields"]["path"] == f"/t{n}"]
        assert mine == [f"t{n} line {line}" for line in range(500)]


def test_a_forked_child_ships_its_own_events_with_fresh_ids() -> None:
    app, state, publisher = app_with_state()
    app.logger.info("parent")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its buffer starts empty, its dispatcher afresh
        try:
            app.logger.info("child")
            events = state.buffer.take(10)
            os.write(
                write_end, ",".join(e["message"] + ":" + e["event_id"] for e in events).encode()
            )
        finally:
            os._exit(0)
    os.close(write_end)
    os.waitpid(pid, 0)
    with os.fdopen(read_end) as pipe:
        child = pipe.read().split(",")
    parent = shipped(state, publisher)
    assert [e["message"] for e in parent] == ["parent"]
    assert [item.split(":")[0] for item in child] == ["child"]
    assert child[0].split(":")[1][:16] != parent[0]["event_id"][:16]
