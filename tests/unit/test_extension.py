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


def test_effective_values_are_written_back_to_app_config_the_default_stream_too() -> None:
    app = Flask(unique_name())
    app.config["CLOUDLOG_LOG_STREAM"] = None  # as a config file may leave it
    CloudLog(app)
    state = app.extensions["cloudlog"]
    assert state.log_stream and app.config["CLOUDLOG_LOG_STREAM"] == state.log_stream
    assert app.config["CLOUDLOG_LOG_GROUP"] == state.log_group == f"cloudlog/{app.name}"


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


# --- names ingest would refuse for any tenant: refused at init_app (issue 14, item 1) ---------

REFUSED_GROUPS = [
    ("", None),  # "" means the default group: taken
    ("bad group!", "may contain only ASCII letters, digits and . - _ / #"),
    ("caf\u00e9", "may contain only ASCII letters, digits and . - _ / #"),
    ("\uff0e\uff0e/x", "may contain only ASCII letters, digits and . - _ / #"),
    ("aws/x", "may not start with 'aws/'"),
    ("AWS/x", "may not start with 'aws/'"),
    ("/aws/lambda/shop", "may not start with 'aws/'"),
    ("/", "must not be empty"),
    ("shop//web", "contain '//'"),
    ("//shop", "may not start with '//'"),
    ("shop/", "end with '/'"),
    ("../other", "may not contain '..' or '.' segments"),
    ("shop/../other", "may not contain '..' or '.' segments"),
    ("shop/./web", "may not contain '..' or '.' segments"),
    ("shop..web", "may not contain '..' or '.' segments"),
    ("x" * 513, "may be at most 512 characters"),
]


@pytest.mark.parametrize(("group", "rule"), [g for g in REFUSED_GROUPS if g[1] is not None])
def test_a_group_ingest_would_refuse_fails_init_app_naming_the_key_and_the_rule(
    group: str, rule: str
) -> None:
    app = Flask(unique_name())
    app.config["CLOUDLOG_LOG_GROUP"] = group
    with pytest.raises(CloudLogConfigError) as raised:
        CloudLog(app)
    assert str(raised.value).startswith("invalid cloudlog configuration: CLOUDLOG_LOG_GROUP: ")
    assert rule in str(raised.value)
    assert "cloudlog" not in app.extensions


REFUSED_STREAMS = [
    ("a:b", "may not contain ':'"),
    ("a*b", "may not contain '*'"),
    ("s" * 513, "must be 1-512 characters"),
    ("web\n1", "may not contain control characters"),
    ("web\u202e1", "format (bidirectional, zero-width)"),
    ("web\u200b1", "format (bidirectional, zero-width)"),
    ("web\u20281", "line separator"),
    ("_rejected", "'_rejected' is reserved"),
    ("_REJECTED ", "'_rejected' is reserved"),
    ("_r\u0435jected", "'_rejected' is reserved"),  # Cyrillic ie
]


@pytest.mark.parametrize(("stream", "rule"), REFUSED_STREAMS)
def test_a_stream_ingest_would_refuse_fails_init_app_naming_the_key_and_the_rule(
    stream: str, rule: str
) -> None:
    app = Flask(unique_name())
    app.config["CLOUDLOG_LOG_STREAM"] = stream
    with pytest.raises(CloudLogConfigError) as raised:
        CloudLog(app)
    assert str(raised.value).startswith("invalid cloudlog configuration: CLOUDLOG_LOG_STREAM: ")
    assert rule in str(raised.value)


def test_names_from_options_and_the_environment_are_judged_too(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(CloudLogConfigError, match=r"CLOUDLOG_LOG_GROUP: .* 'aws/'"):
        CloudLog(Flask(unique_name()), log_group="aws/x")
    monkeypatch.setenv("CLOUDLOG_LOG_STREAM", "a:b")
    with pytest.raises(CloudLogConfigError, match=r"CLOUDLOG_LOG_STREAM: .* ':'"):
        CloudLog(Flask(unique_name()))


@pytest.mark.parametrize(
    "group", ["/ecs/shop", "ecs/shop", "/shop", "shop.web/a-b_c#1", "", "x" * 512]
)
def test_good_groups_are_taken_as_given_a_leading_slash_included(group: str) -> None:
    app = Flask(unique_name())
    app.config.update(CLOUDLOG_LOG_GROUP=group, TESTING=True)
    CloudLog(app)
    state = app.extensions["cloudlog"]
    with app.app_context():
        state.log("info", "hello")
    (event,) = state.captured
    assert event["log_group"] == (group or f"cloudlog/{app.name}"), "ingest maps it, not the app"


def test_the_default_group_is_always_one_ingest_takes() -> None:
    for name in ("shop..web", "a/../b", "..", "/x/", "café"):
        app = Flask(unique_name())
        app.name = name  # Flask takes it from import_name by default
        CloudLog(app)
        assert app.config["CLOUDLOG_LOG_GROUP"].startswith("cloudlog/")


@pytest.mark.parametrize(("group", "rule"), [g for g in REFUSED_GROUPS if g[0] and g[1]])
def test_state_log_refuses_a_group_ingest_would_refuse(group: str, rule: str) -> None:
    state, publisher = make_state()
    with pytest.raises(ValueError) as raised:
        state.log("info", "x", log_group=group)
    assert str(raised.value).startswith("log_group: log group ") and rule in str(raised.value)
    state.close()
    assert publisher.events == []


@pytest.mark.parametrize(("stream", "rule"), REFUSED_STREAMS)
def test_state_log_refuses_a_stream_ingest_would_refuse(stream: str, rule: str) -> None:
    state, publisher = make_state()
    with pytest.raises(ValueError) as raised:
        state.log("info", "x", log_stream=stream)
    assert str(raised.value).startswith("log_stream: log stream ") and rule in str(raised.value)
    state.close()
    assert publisher.events == []


def test_state_log_takes_a_leading_slash_as_given() -> None:
    state, publisher = make_state()
    state.log("info", "x", log_group="/ecs/shop")
    assert state.flush(5)
    state.close()
    (event,) = publisher.events
    assert event["log_group"] == "/ecs/shop"
