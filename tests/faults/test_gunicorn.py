"""gunicorn --preload with 3 workers, stopped with SIGTERM: each worker's lines all arrive."""

from __future__ import annotations

import json
import signal
import sys
import uuid
from collections import defaultdict
from pathlib import Path

import httpx
import pytest

from cloudlog_core.aws import AwsSettings, make_client
from cloudlog_devtools.processes import LOOPBACK, ManagedProcess, free_port
from tests.faults.harness import assert_exactly_once, fault_pipeline, wait_for_lines

pytestmark = pytest.mark.faults

LINES = 300
WORKERS = 3


def test_gunicorn_preload_three_workers_each_workers_lines_arrive(tmp_path: Path) -> None:
    group = f"faults/gunicorn-{uuid.uuid4().hex[:8]}"
    with fault_pipeline(tmp_path) as pipeline:
        port = free_port()
        gunicorn = ManagedProcess(
            "gunicorn",
            [
                sys.executable,
                "-m",
                "gunicorn",
                "--preload",
                f"--workers={WORKERS}",
                f"--bind={LOOPBACK}:{port}",
                "--graceful-timeout=30",
                "tests.faults.gunicorn_app:app",
            ],
            env={
                **pipeline.env,
                "CLOUDLOG_LOG_GROUP": group,
                "CLOUDLOG_LOG_STREAM": "web",
                "CLOUDLOG_FLUSH_INTERVAL": "0.05",
                "PYTHONPATH": str(Path(__file__).parents[2]),
            },
            log_dir=tmp_path,
        ).start()
        try:
            gunicorn.wait_until_ready(f"http://{LOOPBACK}:{port}/log/999999", timeout=30)
            pid_of_line: dict[int, int] = {}
            # A fresh connection a request, so gunicorn's workers share the requests.
            for number in range(LINES):
                response = httpx.get(f"http://{LOOPBACK}:{port}/log/{number}", timeout=10)
                pid_of_line[number] = int(response.text)
        finally:
            gunicorn.signal(signal.SIGTERM)  # graceful: each worker flushes at exit
            assert gunicorn.process is not None
            gunicorn.process.wait(timeout=60)
            gunicorn.stop()
        assert gunicorn.process.returncode == 0, gunicorn.log_tail()

        counts = wait_for_lines(
            pipeline.emulator_url, pipeline.stored_group(group), "web", LINES + 1
        )
        logs = make_client("logs", AwsSettings(aws_endpoint_url=pipeline.emulator_url))
        events = logs.get_log_events(
            logGroupName=pipeline.stored_group(group), logStreamName="web", startFromHead=True
        )
    documents = [json.loads(event["message"]) for event in events["events"]]

    counts.pop(999999, None)  # the readiness probe's line
    assert_exactly_once(counts, LINES)
    lines_by_pid: dict[int, set[int]] = defaultdict(set)
    for number, pid in pid_of_line.items():
        lines_by_pid[pid].add(number)
    assert len(lines_by_pid) == WORKERS, "every worker served requests"
    shipped_pid = {
        int(doc["message"].split()[1]): doc["fields"]["pid"]
        for doc in documents
        if doc["message"].startswith("line ")
    }
    for pid, numbers in lines_by_pid.items():
        assert {n for n in numbers if shipped_pid.get(n) == pid} == numbers
    assert sum(1 for doc in documents if doc["message"] == "master loaded the app") == 1
