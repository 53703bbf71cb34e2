"""Shared fixtures: the real pipeline (emulator, ingest, worker as processes) for integration."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from moto.server import ThreadedMotoServer

from cloudlog_core.aws import AwsSettings, make_client
from cloudlog_devtools.localpipeline import LocalPipeline
from cloudlog_devtools.processes import LOOPBACK, free_port

# Set (``make test-localstack``): the pipeline uses this running endpoint, not its own emulator.
EXTERNAL_ENDPOINT_ENV = "CLOUDLOG_TEST_AWS_ENDPOINT_URL"


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    """A bare moto server on a free loopback port, for tests of one part (writer, proxy)."""
    server = ThreadedMotoServer(ip_address=LOOPBACK, port=free_port(), verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPipeline]:
    """Emulator, uvicorn ingest and a Celery worker, as real processes on free loopback ports.

    With ``CLOUDLOG_TEST_AWS_ENDPOINT_URL`` set, no emulator: ingest and the worker use that
    endpoint (LocalStack from ``make localstack-up``, its queues already created)."""
    log_dir = Path(tmp_path_factory.mktemp("pipeline-logs"))
    running = LocalPipeline(
        log_dir=log_dir,
        emulator_port=free_port(),
        ingest_port=free_port(),
        external_endpoint_url=os.environ.get(EXTERNAL_ENDPOINT_ENV) or None,
    )
    running.start()
    yield running
    running.stop()


@pytest.fixture(scope="session")
def logs_client(pipeline: LocalPipeline) -> Any:
    return make_client("logs", AwsSettings(aws_endpoint_url=pipeline.emulator_url))


@pytest.fixture
def unique_group() -> str:
    """A log group of this test's own, so tests sharing the emulator do not see each other."""
    return f"cloudlog-test/{uuid.uuid4().hex[:12]}"


def read_stream(client: Any, group: str, stream: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    token: str | None = None
    while True:
        kwargs: dict[str, Any] = {
            "logGroupName": group,
            "logStreamName": stream,
            "startFromHead": True,
        }
        if token:
            kwargs["nextToken"] = token
        page = client.get_log_events(**kwargs)
        events.extend(page["events"])
        if page.get("nextForwardToken") in (None, token) or not page["events"]:
            return events
        token = page["nextForwardToken"]


def wait_for(
    probe: Callable[[], Any], *, timeout: float = 30.0, interval: float = 0.2, what: str = ""
) -> Any:
    """Poll until ``probe`` returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except Exception as exc:  # the group may not exist yet
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what or probe}: last={last!r}")


def log_event(group: str, stream: str = "s", message: str = "m", **extra: Any) -> dict[str, Any]:
    """One ``POST /v1/logs`` event, stamped now, with a fresh id."""
    return {
        "event_id": uuid.uuid4().hex,
        "timestamp": int(time.time() * 1000),
        "log_group": group,
        "log_stream": stream,
        "message": message,
        **extra,
    }
