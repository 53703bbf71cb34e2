"""The fault suite's tools: a Flask app that logs numbered lines, and exact read-back counting."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from flask import Flask

from cloudlog_core.aws import AwsSettings, make_client
from cloudlog_devtools.awsproxy import AwsProxy
from cloudlog_devtools.localpipeline import LocalPipeline
from cloudlog_devtools.processes import free_port
from flask_cloudlog import CloudLog, CloudLogState
from tests.conftest import read_stream

# Short timeouts so that redelivery happens within a test: a killed worker's messages come back
# within the 12 s visibility timeout (the worker's heartbeats keep them hidden while it lives).
FAULT_ENV = {
    "CLOUDLOG_VISIBILITY_TIMEOUT": "12",
    "CLOUDLOG_HTTP_CONNECT_TIMEOUT": "2",
    "CLOUDLOG_HTTP_READ_TIMEOUT": "6",
    "CLOUDLOG_RETRY_BACKOFF_BASE": "0.5",
    "CLOUDLOG_RETRY_BACKOFF_MAX": "3",
    "CLOUDLOG_WAIT_TIME_SECONDS": "1",
    "CLOUDLOG_INGEST_SHUTDOWN_TIMEOUT_SECONDS": "20",
}
LINE_PREFIX = "line "


@contextmanager
def fault_pipeline(
    tmp_path: Path,
    *,
    sqs_endpoint_url: str | None = None,
    logs_endpoint_url: str | None = None,
    emulator_port: int | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[LocalPipeline]:
    pipeline = LocalPipeline(
        log_dir=tmp_path / "logs",
        emulator_port=emulator_port or free_port(),
        ingest_port=free_port(),
        sqs_endpoint_url=sqs_endpoint_url,
        logs_endpoint_url=logs_endpoint_url,
        extra_env={**FAULT_ENV, **(env or {})},
    )
    try:
        pipeline.start()
        yield pipeline
    finally:
        pipeline.stop()


@contextmanager
def pipeline_behind_proxy(
    tmp_path: Path, service: Literal["sqs", "logs"], **proxy_options: Any
) -> Iterator[tuple[LocalPipeline, AwsProxy]]:
    """A fault pipeline whose SQS (app and worker) or CloudWatch Logs (ingest) traffic goes
    through an ``AwsProxy`` in front of the emulator."""
    emulator_port = free_port()
    with AwsProxy(f"http://127.0.0.1:{emulator_port}", **proxy_options) as proxy:
        endpoint = {f"{service}_endpoint_url": proxy.url}
        with fault_pipeline(tmp_path, emulator_port=emulator_port, **endpoint) as pipeline:  # type: ignore[arg-type]
            yield pipeline, proxy


class NumberedLines:
    """A Flask app in this process whose requests log ``line 000042``-style numbered lines."""

    def __init__(self, sqs_endpoint_url: str, **options: Any) -> None:
        self.group = f"faults/{uuid.uuid4().hex[:10]}"
        self.stream = "app"
        self.app = Flask(f"faults-{uuid.uuid4().hex[:8]}")
        settings: dict[str, Any] = {
            "aws_endpoint_url": sqs_endpoint_url,
            "log_group": self.group,
            "log_stream": self.stream,
            "flush_interval": 0.05,
            "batch_max_events": 100,
            "publish_retry_max_seconds": 1.0,
            "shutdown_timeout": 30.0,
        }
        settings.update(options)
        CloudLog(self.app, **settings)
        self.state: CloudLogState = self.app.extensions["cloudlog"]
        self.client = self.app.test_client()
        self.emitted = 0
        self.slowest_request_s = 0.0

        @self.app.get("/log/<int:number>")
        def log_line(number: int) -> str:
            self.app.logger.info("%s%06d", LINE_PREFIX, number)
            return "ok"

    def emit(self, number: int) -> None:
        assert self.client.get(f"/log/{number}").status_code == 200
        self.emitted += 1

    def emit_paced(self, count: int, per_second: float, start: int = 0) -> float:
        """Log ``count`` lines at a steady rate; returns the slowest request, in seconds."""
        interval = 1.0 / per_second
        began = time.monotonic()
        slowest = 0.0
        for offset in range(count):
            request_started = time.monotonic()
            self.emit(start + offset)
            slowest = max(slowest, time.monotonic() - request_started)
            pause = began + (offset + 1) * interval - time.monotonic()
            if pause > 0:
                time.sleep(pause)
        return slowest

    @contextmanager
    def emitting_in_background(self, count: int, per_second: float) -> Iterator[threading.Thread]:
        def run() -> None:
            self.slowest_request_s = self.emit_paced(count, per_second)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        try:
            yield thread
        finally:
            thread.join(timeout=count / per_second + 60)

    def close(self) -> bool:
        return self.state.close()


def read_line_counts(logs_client: Any, group: str, stream: str) -> Counter[int]:
    """How often each numbered line is stored (none yet while the group does not exist)."""
    try:
        events = read_stream(logs_client, group, stream)
    except logs_client.exceptions.ResourceNotFoundException:
        return Counter()
    messages = (json.loads(event["message"])["message"] for event in events)
    return Counter(
        int(message[len(LINE_PREFIX) :]) for message in messages if message.startswith(LINE_PREFIX)
    )


def wait_for_lines(
    emulator_url: str, group: str, stream: str, expected: int, timeout: float = 120.0
) -> Counter[int]:
    """Poll until ``expected`` lines arrived and nothing more arrives for a while."""
    logs = make_client("logs", AwsSettings(aws_endpoint_url=emulator_url))
    deadline = time.monotonic() + timeout
    counts: Counter[int] = Counter()
    settled_since: float | None = None
    while time.monotonic() < deadline:
        counts = read_line_counts(logs, group, stream)
        if sum(counts.values()) >= expected:
            settled_since = settled_since or time.monotonic()
            if time.monotonic() - settled_since > 3.0:  # late duplicates would show by now
                return counts
        time.sleep(0.5)
    return counts


def assert_exactly_once(counts: Counter[int], expected: int) -> None:
    missing = sorted(set(range(expected)) - set(counts))
    twice = sorted(number for number, seen in counts.items() if seen > 1)
    unexpected = sorted(set(counts) - set(range(expected)))
    assert (missing[:20], twice[:20], unexpected[:20]) == ([], [], []), (
        f"{len(missing)} missing, {len(twice)} duplicated, {len(unexpected)} unexpected "
        f"of {expected}"
    )


def cloudlog_cli(endpoint: str, *args: str) -> str:
    """The ``cloudlog`` command against ``endpoint``, with nothing of this shell's environment."""
    env = {
        "PATH": "/usr/bin:/bin",
        "CLOUDLOG_AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    result = subprocess.run(
        [sys.executable, "-m", "cloudlog_cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout
