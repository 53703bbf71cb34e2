"""The app-factory pattern: many apps in one process share one dispatcher, one broker
connection and one bounded exit; under Flask's TESTING nothing is shipped, only captured."""

from __future__ import annotations

import gc
import logging
import os
import resource
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask

from cloudlog_wire.payload import EncodedBatch
from flask_cloudlog import CloudLog, CloudLogState
from flask_cloudlog import extension as extension_module
from flask_cloudlog.delivery import ProcessDispatcher, process_dispatcher
from flask_cloudlog.extension import CAPTURE_MAX_EVENTS
from flask_cloudlog.settings import ExtensionSettings
from tests.unit.test_extension import RecordingPublisher, unique_name

DELIVERY_ENV = ("CLOUDLOG_AWS_ENDPOINT_URL", "CLOUDLOG_BROKER_URL", "CLOUDLOG_ENABLED")


@pytest.fixture(autouse=True)
def no_delivery_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in DELIVERY_ENV:
        monkeypatch.delenv(name, raising=False)


def create_app(name: str, **config: Any) -> Flask:
    """A factory as users write one: a new app per call, ``CloudLog(app)`` inside."""
    app = Flask(name)
    app.config.update(config)
    CloudLog(app)

    @app.get("/")
    def index() -> str:
        app.logger.info("hello from %s", app.name, extra={"n": 1})
        return "ok"

    return app


def dispatcher_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "cloudlog-dispatcher"]


# --- TESTING: capture, nothing published ---------------------------------------------------


def test_under_testing_with_nothing_configured_events_are_captured_as_they_would_ship(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="flask_cloudlog")
    extension_module._said_capture = False
    app = create_app(unique_name(), TESTING=True, CLOUDLOG_LOG_STREAM="web-1")
    state: CloudLogState = app.extensions["cloudlog"]
    assert state.delivering is False and app.config["CLOUDLOG_ENABLED"] is False
    app.test_client().get("/", headers={"X-Request-ID": "r1"})
    state.log("warning", "direct", log_group="other/group", sku="A-17")
    (line, direct) = state.captured
    assert line["message"] == f"hello from {app.name}" and line["level"] == "info"
    assert (line["log_group"], line["log_stream"]) == (f"cloudlog/{app.name}", "web-1")
    assert line["fields"] == {"request_id": "r1", "path": "/", "method": "GET", "n": 1}
    assert line["logger"] == app.name and line["event_id"] and line["timestamp"] > 0
    assert (direct["log_group"], direct["fields"]) == ("other/group", {"sku": "A-17"})
    # Nothing buffered, no thread, nothing to wait for.
    assert not state.dispatcher.is_running and len(state.buffer) == 0
    assert state.flush(0) and state.close()
    said = [r for r in caplog.records if "delivery off" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.DEBUG
    create_app(unique_name(), TESTING=True)
    assert len([r for r in caplog.records if "delivery off" in r.getMessage()]) == 1, "once"
    state.clear_captured()
    assert state.captured == []


def test_the_capture_is_bounded() -> None:
    app = create_app(unique_name(), TESTING=True)
    state: CloudLogState = app.extensions["cloudlog"]
    for n in range(CAPTURE_MAX_EVENTS + 5):
        app.logger.info("line %d", n)
    captured = state.captured
    assert len(captured) == CAPTURE_MAX_EVENTS
    assert captured[0]["message"] == "line 5" and captured[-1]["message"].endswith(
        str(CAPTURE_MAX_EVENTS + 4)
    )


@pytest.mark.parametrize(
    ("config", "env", "delivering"),
    [
        ({"TESTING": True}, {}, False),
        ({"TESTING": True, "CLOUDLOG_AWS_ENDPOINT_URL": "http://127.0.0.1:9"}, {}, True),
        ({"TESTING": True, "CLOUDLOG_BROKER_URL": "sqs://a:b@127.0.0.1:9"}, {}, True),
        ({"TESTING": True}, {"CLOUDLOG_AWS_ENDPOINT_URL": "http://127.0.0.1:9"}, True),
        ({"TESTING": True, "CLOUDLOG_ENABLED": True}, {}, True),
        ({"TESTING": True}, {"CLOUDLOG_ENABLED": "true"}, True),
        ({}, {}, True),
        ({"CLOUDLOG_ENABLED": False}, {}, False),
        ({}, {"CLOUDLOG_ENABLED": "false"}, False),
        ({"TESTING": True, "CLOUDLOG_BROKER_URL": "sqs://", "CLOUDLOG_ENABLED": False}, {}, False),
    ],
)  # fmt: skip
def test_when_delivery_is_on(
    monkeypatch: pytest.MonkeyPatch, config: dict[str, Any], env: dict[str, str], delivering: bool
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    app = create_app(unique_name(), **config)
    state: CloudLogState = app.extensions["cloudlog"]
    assert state.delivering is delivering
    assert app.config["CLOUDLOG_ENABLED"] is delivering


def test_enabled_is_a_setting_with_an_unset_default() -> None:
    assert ExtensionSettings().enabled is None
    assert ExtensionSettings.config_keys()["CLOUDLOG_ENABLED"] == "enabled"


# --- many apps, one dispatcher ------------------------------------------------------------


class FailingPublisher:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, batch: EncodedBatch) -> None:
        self.calls += 1
        raise ConnectionError("connection refused")


def states_on(runner: ProcessDispatcher, count: int, **overrides: Any) -> list[Any]:
    made = []
    for n in range(count):
        publisher = RecordingPublisher()
        settings = ExtensionSettings(
            log_group=f"g{n}", log_stream="s", flush_interval=0.02, api_key=f"key-{n}", **overrides
        )
        made.append((CloudLogState(settings, publisher=publisher, runner=runner), publisher))
    return made


def test_twenty_four_apps_share_one_thread_and_each_batch_carries_one_apps_key() -> None:
    runner = ProcessDispatcher()
    before = len(dispatcher_threads())
    made = states_on(runner, 24)
    for n, (state, _) in enumerate(made):
        for line in range(5):
            state.log("info", f"app {n} line {line}")
    assert len(dispatcher_threads()) == before + 1
    for state, _ in made:
        assert state.flush(5)
        assert state.dispatcher.is_running
    assert runner.attached == 24
    for n, (state, publisher) in enumerate(made):
        assert [e["message"] for e in publisher.events] == [f"app {n} line {i}" for i in range(5)]
        assert {e["log_group"] for e in publisher.events} == {f"g{n}"}
        assert state.stats()["published_events"] == 5
        assert state.dispatcher.encoder._api_key == f"key-{n}"
    assert runner.close(1) == 0
    assert not runner.is_running


def test_apps_with_one_broker_share_one_celery_app() -> None:
    first = create_app(unique_name(), CLOUDLOG_AWS_ENDPOINT_URL="http://127.0.0.1:9")
    second = create_app(unique_name(), CLOUDLOG_AWS_ENDPOINT_URL="http://127.0.0.1:9")
    other = create_app(unique_name(), CLOUDLOG_AWS_ENDPOINT_URL="http://127.0.0.1:10")
    celery = [app.extensions["cloudlog"].publisher._celery() for app in (first, second, other)]
    assert celery[0] is celery[1] is not celery[2]
    assert first.extensions["cloudlog"].dispatcher._runner is process_dispatcher()


def test_apps_of_one_name_share_their_logger_and_each_line_ships_once() -> None:
    name = unique_name()
    apps = [create_app(name, TESTING=True) for _ in range(24)]
    ours = [h for h in apps[-1].logger.handlers if type(h).__name__ == "CloudLogHandler"]
    assert ours == [apps[-1].extensions["cloudlog"].handler]
    apps[-1].test_client().get("/")
    assert [e["message"] for e in apps[-1].extensions["cloudlog"].captured] == [
        f"hello from {name}"
    ]
    assert all(app.extensions["cloudlog"].captured == [] for app in apps[:-1])


# --- exit: bounded as a whole, one line ---------------------------------------------------


def test_exit_does_not_wait_when_the_broker_was_never_reached(
    caplog: pytest.LogCaptureFixture,
) -> None:
    runner = ProcessDispatcher()
    made = []
    for n in range(24):
        settings = ExtensionSettings(log_group=f"g{n}", flush_interval=0.02, shutdown_timeout=30)
        made.append(CloudLogState(settings, publisher=FailingPublisher(), runner=runner))
    for state in made:
        state.log("info", "lost")
    deadline = time.monotonic() + 5
    while not runner.broker_failed and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="flask_cloudlog"):
        assert runner.close() == 24
    assert time.monotonic() - started < 1.0
    gave_up = [r.getMessage() for r in caplog.records if "gave up" in r.getMessage()]
    assert gave_up == ["cloudlog: gave up on 24 events at shutdown (the broker was never reached)"]
    assert sum(state.stats()["abandoned_events"] for state in made) == 24


def test_exit_waits_at_most_the_shutdown_timeout_in_total_however_many_apps(
    caplog: pytest.LogCaptureFixture,
) -> None:
    runner = ProcessDispatcher()
    runner.broker_reached = True  # it was up once: worth trying again, within the timeout
    made = []
    for n in range(24):
        settings = ExtensionSettings(log_group=f"g{n}", flush_interval=60, shutdown_timeout=1.0)
        made.append(CloudLogState(settings, publisher=FailingPublisher(), runner=runner))
    for state in made:
        state.log("info", "lost")
    started = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="flask_cloudlog"):
        assert runner.close() == 24
    assert time.monotonic() - started < 1.5
    gave_up = [r.getMessage() for r in caplog.records if "gave up" in r.getMessage()]
    assert len(gave_up) == 1 and "gave up on 24 events" in gave_up[0]
    assert not [r for r in caplog.records if "unreachable at shutdown" in r.getMessage()]


class HangingPublisher:
    """A publish that does not return in time (botocore retrying a refused connection)."""

    def __call__(self, batch: EncodedBatch) -> None:
        time.sleep(10)


def test_exit_does_not_wait_past_the_timeout_for_a_publish_that_hangs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    runner = ProcessDispatcher()
    runner.broker_reached = True
    made = []
    for n in range(3):
        settings = ExtensionSettings(log_group=f"g{n}", flush_interval=60, shutdown_timeout=1.0)
        made.append(CloudLogState(settings, publisher=HangingPublisher(), runner=runner))
        made[-1].log("info", "stuck")
    started = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="flask_cloudlog"):
        assert runner.close() == 3
    assert time.monotonic() - started < 1.3
    gave_up = [r.getMessage() for r in caplog.records if "gave up" in r.getMessage()]
    assert len(gave_up) == 1 and "gave up on 3 events" in gave_up[0]


def test_exit_with_nothing_left_returns_at_once() -> None:
    runner = ProcessDispatcher()
    (state, publisher), *_ = states_on(runner, 3, shutdown_timeout=30)
    state.log("info", "one")
    assert state.flush(5)
    started = time.monotonic()
    assert runner.close() == 0
    assert time.monotonic() - started < 0.5
    assert len(publisher.events) == 1


def test_exit_publishes_what_dropped_apps_left_behind() -> None:
    runner = ProcessDispatcher()
    publishers = []
    for n in range(10):
        settings = ExtensionSettings(log_group=f"g{n}", flush_interval=60, shutdown_timeout=5)
        publisher = RecordingPublisher()
        publishers.append(publisher)
        CloudLogState(settings, publisher=publisher, runner=runner).log("info", f"last {n}")
    gc.collect()
    assert runner.close() == 0
    assert [p.events[0]["message"] for p in publishers] == [f"last {n}" for n in range(10)]


# --- apps by the thousand -----------------------------------------------------------------


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


@pytest.fixture
def recording_publishers(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """``init_app``'s publisher, recording instead of sending (so delivery is on, no broker)."""
    made: list[Any] = []

    class Recording(RecordingPublisher):
        def __init__(self, *args: Any) -> None:
            super().__init__()
            made.append(self)

    monkeypatch.setattr(extension_module, "CeleryPublisher", Recording)
    yield made


@pytest.mark.parametrize("testing", [False, True], ids=["delivering", "capturing"])
def test_a_thousand_apps_made_and_dropped_leave_no_threads_fds_or_memory_behind(
    recording_publishers: list[RecordingPublisher], testing: bool
) -> None:
    name = unique_name()
    runner = process_dispatcher()

    def make_and_drop(count: int) -> None:
        for _ in range(count):
            app = create_app(name, TESTING=testing, CLOUDLOG_FLUSH_INTERVAL=0.02)
            app.logger.info("one line")

    gc.collect()
    attached = runner.attached  # other tests' apps still alive
    make_and_drop(50)  # warm up: imports, the runner's thread, allocator pools
    gc.collect()
    threads, fds, rss = threading.active_count(), open_fds(), rss_bytes()
    make_and_drop(1_000)
    gc.collect()
    deadline = time.monotonic() + 10
    while runner.attached > attached + 1 and time.monotonic() < deadline:  # dropped apps leave
        time.sleep(0.05)
    assert threading.active_count() <= threads
    assert open_fds() <= fds + 2
    grown = rss_bytes() - rss
    assert grown < 40 * 1024 * 1024, f"RSS grew {grown / 1e6:.1f} MB"
    if testing:
        assert recording_publishers and not any(p.events for p in recording_publishers)
    else:
        assert runner.attached <= attached + 1
        shipped = sum(len(p.events) for p in recording_publishers)
        assert shipped >= 1_049  # the newest app's line may still wait for its interval


def test_a_forked_child_gets_a_dispatcher_thread_of_its_own_and_ships_only_its_events() -> None:
    runner = process_dispatcher()
    publisher = RecordingPublisher()
    settings = ExtensionSettings(log_group="g", log_stream="s", flush_interval=0.02)
    state = CloudLogState(settings, publisher=publisher)
    assert state.dispatcher._runner is runner
    state.log("info", "parent")
    assert state.flush(5) and runner.is_running
    state.log("info", "parent, later")  # still buffered at the fork: the parent ships it
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            state.log("info", "child")
            done = state.flush(5)
            messages = [e["message"] for e in publisher.events]
            os.write(write_end, f"{done}|{runner.is_running}|{','.join(messages)}".encode())
        finally:
            os._exit(0)
    os.close(write_end)
    os.waitpid(pid, 0)
    with os.fdopen(read_end) as pipe:
        flushed, running, shipped = pipe.read().split("|")
    assert (flushed, running) == ("True", "True")
    assert shipped.split(",") == ["parent", "child"]  # "parent" was shipped before the fork
    assert state.flush(5)
    assert [e["message"] for e in publisher.events] == ["parent", "parent, later"]
    state.close()
