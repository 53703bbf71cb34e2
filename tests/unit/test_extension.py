from __future__ import annotations

import logging
import threading
import uuid
from typing import Any

import pytest
from flask import Flask

from cloudlog_wire.payload import EncodedBatch, task_events
from flask_cloudlog import CloudLog, CloudLogConfigError, CloudLogState
from flask_cloudlog.events import level_name
from flask_cloudlog.handler import CloudLogHandler
from flask_cloudlog.settings import ExtensionSettings


def unique_name() -> str:
    """Flask apps share their logger by name: a name of its own keeps each test's handlers apart."""
    return f"shop-{uuid.uuid4().hex[:8]}"


class RecordingPublisher:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def __call__(self, batch: EncodedBatch) -> None:
        """Keeps what the worker would get: the task's argument, decoded."""
        events = task_events(batch.data, batch.encoding)
        assert len(events) == batch.count
        with self.lock:
            self.events.extend(events)


def test_init_app_registers_state_sets_defaults_and_starts_no_thread() -> None:
    app = Flask(unique_name())
    CloudLog(app)
    state = app.extensions["cloudlog"]
    assert isinstance(state, CloudLogState)
    assert app.config["CLOUDLOG_LOG_GROUP"] == f"cloudlog/{app.name}"
    assert app.config["CLOUDLOG_LEVEL"] == "INFO"
    assert app.config["CLOUDLOG_QUEUE_NAME"] == "cloudlog"
    assert not state.dispatcher.is_running
    assert state.handler in app.logger.handlers


def test_options_are_defaults_and_app_config_wins() -> None:
    app = Flask(unique_name())
    app.config["CLOUDLOG_LOG_STREAM"] = "from-config"
    CloudLog(app, log_stream="from-option", log_group="orders")
    state = app.extensions["cloudlog"]
    assert state.log_stream == "from-config"
    assert state.log_group == "orders"


def test_second_init_app_is_a_clear_error() -> None:
    app = Flask(unique_name())
    extension = CloudLog(app)
    with pytest.raises(RuntimeError, match="already initialised"):
        extension.init_app(app)


def test_use_before_init_app_is_a_clear_error() -> None:
    extension = CloudLog()
    with Flask(unique_name()).app_context(), pytest.raises(RuntimeError, match="init_app"):
        extension.log("info", "x")


@pytest.mark.parametrize(
    ("key", "value", "needle"),
    [
        ("CLOUDLOG_LOG_GROUP", "bad group!", "log group"),
        ("CLOUDLOG_LOG_GROUP", "aws/x", "aws/"),
        ("CLOUDLOG_LOG_STREAM", "a:b", "log stream"),
        ("CLOUDLOG_LEVEL", "LOUD", "level"),
        ("CLOUDLOG_BUFFER_MAX_EVENTS", 0, "buffer_max_events"),
        ("CLOUDLOG_MAX_TASK_BYTES", 2_000_000, "max_task_bytes"),
        ("CLOUDLOG_BATCH_MAX_EVENTS", 10_001, "batch_max_events"),
        ("CLOUDLOG_MAX_BATCH_BYTES", 32 * 1024 * 1024, "max_batch_bytes"),
        ("CLOUDLOG_TASK_COMPRESSION", "brotli", "task_compression"),
    ],
)
def test_invalid_settings_fail_at_init_naming_the_problem(
    key: str, value: Any, needle: str
) -> None:
    app = Flask(unique_name())
    app.config[key] = value
    with pytest.raises(CloudLogConfigError, match=needle):
        CloudLog(app)


def test_compression_and_the_batch_bound_reach_the_dispatcher() -> None:
    app = Flask(unique_name())
    CloudLog(app, task_compression="none", max_batch_bytes=100_000, batch_max_events=10_000)
    state = app.extensions["cloudlog"]
    events = [{"event_id": f"e{n}", "message": "m" * 1_000} for n in range(300)]
    batches = list(state.dispatcher.encoder.pack(events))
    assert {batch.encoding for batch in batches} == {"json"}
    assert all(len(batch.data) <= 100_000 for batch in batches) and len(batches) >= 3
    state.close()


def test_unknown_option_is_refused() -> None:
    with pytest.raises(TypeError, match="log_grop"):
        CloudLog(log_grop="x")


def test_every_setting_has_a_config_key() -> None:
    keys = ExtensionSettings.config_keys()
    assert keys["CLOUDLOG_BROKER_URL"] == "broker_url"
    assert len(keys) == len(ExtensionSettings.model_fields)


def make_state(**overrides: Any) -> tuple[CloudLogState, RecordingPublisher]:
    publisher = RecordingPublisher()
    settings = ExtensionSettings(log_group="g", log_stream="s", flush_interval=0.02, **overrides)
    return CloudLogState(settings, publisher=publisher), publisher


def test_records_are_enriched_inside_a_request_and_shipped() -> None:
    app = Flask(unique_name())
    state, publisher = make_state()
    app.extensions["cloudlog"] = state
    app.logger.addHandler(state.handler)
    app.logger.setLevel(logging.DEBUG)

    @app.get("/pay")
    def pay() -> str:
        app.logger.info("paid %s", "42", extra={"amount": 9.5, "obj": object()})
        try:
            raise ValueError("boom")
        except ValueError:
            app.logger.exception("failed")
        return "ok"

    app.test_client().get("/pay", headers={"X-Request-ID": "r1"})
    assert state.flush(5)
    state.close()
    info, error = publisher.events
    assert info["message"] == "paid 42" and info["level"] == "info" and info["logger"] == app.name
    assert info["fields"]["request_id"] == "r1" and info["fields"]["path"] == "/pay"
    assert info["fields"]["amount"] == 9.5
    assert info["fields"]["obj"].startswith("<object object")
    assert error["level"] == "error"
    assert "ValueError: boom" in error["fields"]["exception"]
    assert (info["log_group"], info["log_stream"]) == ("g", "s")


def test_library_loggers_and_empty_messages_are_not_shipped() -> None:
    state, publisher = make_state()
    handler = state.handler
    for name in ("botocore.endpoint", "kombu", "celery.worker", "urllib3.connectionpool"):
        handler.handle(logging.LogRecord(name, logging.ERROR, "", 0, "noise", None, None))
    handler.handle(logging.LogRecord("app", logging.INFO, "", 0, "", None, None))
    handler.handle(logging.LogRecord("app", logging.INFO, "", 0, "kept", None, None))
    assert state.flush(5)
    state.close()
    assert [event["message"] for event in publisher.events] == ["kept"]
    assert state.stats()["empty_messages"] == 1


def test_direct_log_api_with_fields_and_another_stream() -> None:
    state, publisher = make_state()
    state.log("WARNING", "disk low", log_stream="ops", free_mb=12)
    with pytest.raises(ValueError, match="unknown level"):
        state.log("loud", "x")
    with pytest.raises(ValueError, match="log stream"):
        state.log("info", "x", log_stream="a*b")
    assert state.flush(5)
    state.close()
    (event,) = publisher.events
    assert event["level"] == "warning" and event["log_stream"] == "ops"
    assert event["fields"] == {"free_mb": 12}


def test_handler_from_logging_config_uses_the_current_app() -> None:
    app = Flask(unique_name())
    state, publisher = make_state()
    app.extensions["cloudlog"] = state
    handler = CloudLogHandler()
    with app.app_context():
        handler.handle(logging.LogRecord("app", logging.INFO, "", 0, "via config", None, None))
    assert state.flush(5)
    state.close()
    assert [event["message"] for event in publisher.events] == ["via config"]


@pytest.mark.parametrize(
    ("levelno", "name"),
    [
        (5, "debug"),
        (10, "debug"),
        (20, "info"),
        (25, "info"),
        (30, "warning"),
        (45, "error"),
        (50, "critical"),
        (60, "critical"),
    ],
)
def test_numeric_levels_map_onto_the_five_api_levels(levelno: int, name: str) -> None:
    assert level_name(levelno) == name
