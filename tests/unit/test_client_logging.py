"""cloudlog_logging for any process: the handler (dictConfig, environment, capture, exclusions,
exit), context fields (threads, asyncio), the ASGI middleware, Celery task fields, structlog's
processor and OpenTelemetry span ids. No broker: ``enabled=False`` keeps events in memory."""

from __future__ import annotations

import asyncio
import logging
import logging.config
import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

import cloudlog_logging
from cloudlog_logging import CloudLogConfigError, CloudLogHandler, context
from cloudlog_logging.asgi import CloudLogMiddleware
from cloudlog_logging.celery import ship_task_logs
from cloudlog_logging.handler import EXCLUDED_LOGGER_PREFIXES, program_log_group
from cloudlog_logging.structlog import ship


@pytest.fixture
def logger() -> Iterator[logging.Logger]:
    """A logger of its own, not propagating, emptied afterwards."""
    log = logging.getLogger(f"client-test-{uuid.uuid4().hex[:8]}")
    log.propagate = False
    log.setLevel(logging.DEBUG)
    yield log
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()


@pytest.fixture
def handler(logger: logging.Logger) -> CloudLogHandler:
    made = CloudLogHandler(log_group="batch/jobs", log_stream="s1", enabled=False, level="DEBUG")
    logger.addHandler(made)
    return made


@pytest.fixture(autouse=True)
def no_bound_fields() -> Iterator[None]:
    token = context.clear()
    yield
    token.reset()


def fields_of(handler: CloudLogHandler) -> list[dict[str, Any]]:
    return [event.get("fields", {}) for event in handler.captured]


def test_dict_config_makes_a_handler_with_its_options(logger: logging.Logger) -> None:
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "handlers": {
                "cloudlog": {
                    "class": "cloudlog_logging.CloudLogHandler",
                    "log_group": "batch/jobs",
                    "log_stream": "nightly",
                    "enabled": False,
                    "level": "WARNING",
                }
            },
            "loggers": {logger.name: {"handlers": ["cloudlog"], "propagate": False}},
        }
    )
    handler = logger.handlers[0]
    assert isinstance(handler, CloudLogHandler)
    logger.info("not shipped: below the handler's level")
    logger.warning("disk %s%% full", 91, extra={"disk": "/data"})
    [event] = handler.captured
    assert event["log_group"] == "batch/jobs" and event["log_stream"] == "nightly"
    assert (event["level"], event["message"], event["logger"]) == (
        "warning",
        "disk 91% full",
        logger.name,
    )
    assert event["fields"] == {"disk": "/data"}


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLOUDLOG_LOG_GROUP", "from/env")
    monkeypatch.setenv("CLOUDLOG_LEVEL", "ERROR")
    monkeypatch.setenv("CLOUDLOG_ENABLED", "false")
    handler = CloudLogHandler()
    assert handler.shipper.log_group == "from/env"
    assert handler.level == logging.ERROR
    assert not handler.shipper.delivering
    assert CloudLogHandler(log_group="given").shipper.log_group == "given"


def test_the_default_group_is_named_after_the_program(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["/opt/jobs/nightly export.py"])
    assert program_log_group() == "cloudlog/nightly-export"
    monkeypatch.setattr(sys, "argv", [""])
    assert program_log_group() == "cloudlog/python"


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"log_group": "a/../b"}, "CLOUDLOG_LOG_GROUP"),
        ({"log_stream": "a:b"}, "CLOUDLOG_LOG_STREAM"),
        ({"buffer_max_events": 0}, "buffer_max_events"),
        ({"flush_intervall": 1}, "flush_intervall"),
    ],
)
def test_invalid_settings_are_refused_at_once(options: dict[str, Any], error: str) -> None:
    with pytest.raises(CloudLogConfigError, match=error):
        CloudLogHandler(enabled=False, **options)


def test_lines_of_the_delivery_path_are_not_shipped(handler: CloudLogHandler) -> None:
    assert "cloudlog_logging" in EXCLUDED_LOGGER_PREFIXES
    for name in ("botocore.endpoint", "kombu", "celery.app.trace", "cloudlog_logging.state"):
        logging.getLogger(name).propagate = True
        handler.handle(logging.LogRecord(name, logging.ERROR, __file__, 1, "x", None, None))
    handler.handle(logging.LogRecord("celery_tasks", logging.ERROR, __file__, 1, "y", None, None))
    assert [event["message"] for event in handler.captured] == ["y"]


def test_install_puts_a_handler_on_a_logger(logger: logging.Logger) -> None:
    logger.setLevel(logging.ERROR)
    handler = cloudlog_logging.install(logger, enabled=False, level="INFO")
    assert handler in logger.handlers and logger.level == logging.INFO


def test_bound_fields_are_on_every_line_until_undone(
    logger: logging.Logger, handler: CloudLogHandler
) -> None:
    cloudlog_logging.bind(job="nightly")
    with context.bind(order_id=42, when=object()):
        logger.info("inside", extra={"order_id": 43})
    logger.info("after")
    context.unbind("job")
    logger.info("unbound")
    inside, after, unbound = fields_of(handler)
    assert inside["job"] == "nightly" and inside["order_id"] == 43  # extra= wins
    assert inside["when"].startswith("<object object")
    assert after == {"job": "nightly"}
    assert unbound == {}


def test_context_fields_stay_in_their_thread_and_task(
    logger: logging.Logger, handler: CloudLogHandler
) -> None:
    def in_thread(n: int) -> None:
        context.bind(worker=n)
        logger.info("thread %s", n)

    threads = [threading.Thread(target=in_thread, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    async def request(n: int) -> None:
        with context.bind(request=n):
            await asyncio.sleep(0.01 * (3 - n))
            logger.info("task %s", n)

    async def main() -> None:
        await asyncio.gather(*(request(n) for n in range(3)))

    asyncio.run(main())
    logger.info("main")
    by_message = {event["message"]: event.get("fields", {}) for event in handler.captured}
    assert all(by_message[f"thread {n}"] == {"worker": n} for n in range(4))
    assert all(by_message[f"task {n}"] == {"request": n} for n in range(3))
    assert by_message["main"] == {}


def test_the_asgi_middleware_binds_the_request_for_its_duration(
    logger: logging.Logger, handler: CloudLogHandler
) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        logger.info("serving")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request"}

    async def main() -> None:
        wrapped = CloudLogMiddleware(app, response_header=True)
        scope = {"type": "http", "path": "/pay", "method": "POST", "headers": []}
        await wrapped({**scope, "headers": [(b"x-request-id", b"req-7")]}, receive, send)
        await wrapped(scope, receive, send)
        await wrapped({"type": "lifespan"}, receive, send)

    asyncio.run(main())
    logger.info("outside")
    given, made, lifespan, outside = fields_of(handler)
    assert given == {"request_id": "req-7", "path": "/pay", "method": "POST"}
    assert made["request_id"] and made["request_id"] != "req-7" and made["path"] == "/pay"
    assert lifespan == {} and outside == {}
    assert (b"x-request-id", b"req-7") in sent[0]["headers"]


def test_celery_tasks_bind_their_name_and_id(
    logger: logging.Logger, handler: CloudLogHandler
) -> None:
    from celery import Celery
    from celery.signals import task_postrun, task_prerun

    app = Celery("user-app", set_as_current=False)
    other = Celery("other-app", set_as_current=False)

    @app.task(name="shop.charge")
    def charge() -> None: ...

    @other.task(name="other.task")
    def elsewhere() -> None: ...

    shipping = ship_task_logs(app, handler=handler)
    try:
        task_prerun.send(sender=charge, task_id="t-1", task=charge, args=(), kwargs={})
        logger.info("charging")
        task_postrun.send(sender=charge, task_id="t-1", task=charge, args=(), kwargs={})
        task_prerun.send(sender=elsewhere, task_id="t-2", task=elsewhere, args=(), kwargs={})
        logger.info("not ours")
        task_postrun.send(sender=elsewhere, task_id="t-2", task=elsewhere, args=(), kwargs={})
        logger.info("between tasks")
        root = logging.getLogger()
        shipping.attach(root)
        assert handler in root.handlers
    finally:
        logging.getLogger().removeHandler(handler)
        for signal in (task_prerun, task_postrun):
            signal.disconnect(dispatch_uid=f"cloudlog-{id(app)}-{signal.name.split('_')[1]}")
    assert fields_of(handler) == [{"task_name": "shop.charge", "task_id": "t-1"}, {}, {}]


def test_structlog_renders_keys_as_fields(logger: logging.Logger, handler: CloudLogHandler) -> None:
    structlog = pytest.importorskip("structlog")
    log = structlog.wrap_logger(
        logger,
        processors=[structlog.processors.add_log_level, ship],
        wrapper_class=structlog.stdlib.BoundLogger,
    )
    log.bind(user="ada").warning("paid", order=42, name="clash", amount=1.5)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("failed")
    paid, failed = handler.captured
    assert (paid["message"], paid["level"]) == ("paid", "warning")
    assert paid["fields"] == {"user": "ada", "order": 42, "name_": "clash", "amount": 1.5}
    assert failed["level"] == "error" and "RuntimeError: boom" in failed["fields"]["exception"]


def test_a_line_in_an_opentelemetry_span_carries_its_ids(
    logger: logging.Logger, handler: CloudLogHandler
) -> None:
    pytest.importorskip("opentelemetry.sdk.trace")
    from opentelemetry.sdk.trace import TracerProvider

    tracer = TracerProvider().get_tracer("test")
    logger.info("before")
    with tracer.start_as_current_span("work") as span:
        logger.info("inside")
        ids = span.get_span_context()
    before, inside = fields_of(handler)
    assert before == {}
    trace_id = format(ids.trace_id, "032x")
    assert inside == {
        "trace_id": trace_id,
        "span_id": format(ids.span_id, "016x"),
        "xray_trace_id": f"1-{trace_id[:8]}-{trace_id[8:]}",
    }


def test_importing_cloudlog_logging_pulls_in_no_framework() -> None:
    code = textwrap.dedent(
        """
        import sys
        import cloudlog_logging, cloudlog_logging.asgi, cloudlog_logging.structlog
        cloudlog_logging.CloudLogHandler(enabled=False).handle(
            __import__("logging").makeLogRecord({"msg": "x", "name": "job"}))
        heavy = {"flask", "starlette", "fastapi", "structlog", "opentelemetry"}
        print(sorted(name for name in heavy if name in sys.modules))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
