"""The window where a crash would duplicate lines, made deterministic.

A stalled request is forwarded after its stall even when the client is gone, so killing a
process while its request is stalled leaves the events *written but unanswered*. The worker
then retries (or SQS redelivers) a batch that is already in CloudWatch: every line must still
appear exactly once.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from cloudlog_devtools.awsproxy import AwsProxy
from tests.faults.harness import (
    NumberedLines,
    assert_exactly_once,
    fault_pipeline,
    pipeline_behind_proxy,
    wait_for_lines,
)

pytestmark = pytest.mark.faults

LINES = 300
STALL_S = 3.0


def test_ingest_killed_after_putlogevents_was_sent_but_before_it_answered(tmp_path: Path) -> None:
    with pipeline_behind_proxy(tmp_path, "logs", seed=3) as (pipeline, logs_proxy):
        lines = NumberedLines(pipeline.emulator_url)
        for number in range(100):
            lines.emit(number)
        assert lines.state.flush(10)
        wait_for_lines(
            pipeline.emulator_url, pipeline.stored_group(lines.group), lines.stream, 100, timeout=60
        )

        logs_proxy.stall("logs.PutLogEvents", seconds=STALL_S)
        for number in range(100, LINES):
            lines.emit(number)
        assert lines.state.flush(10)
        deadline = time.monotonic() + 30
        while logs_proxy.injected()["stall"] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert logs_proxy.injected()["stall"] > 0, "a commit is stalled in PutLogEvents"
        assert pipeline.ingest is not None
        pipeline.ingest.kill()  # dies before the answer; the stalled put still lands
        logs_proxy.clear_rules()
        time.sleep(STALL_S + 1)
        pipeline.start_ingest()  # recovers the unfinished commit by reading it back
        assert "recovered 1 unfinished commit" in pipeline.ingest.log_text(), (
            pipeline.ingest.log_tail()
        )

        assert lines.close()
        counts = wait_for_lines(
            pipeline.emulator_url, pipeline.stored_group(lines.group), lines.stream, LINES
        )
    assert_exactly_once(counts, LINES)


def test_worker_killed_after_its_batch_reached_ingest_but_before_the_ack(tmp_path: Path) -> None:
    with (
        fault_pipeline(tmp_path) as pipeline,
        AwsProxy(pipeline.ingest_url, strict=False, seed=5) as ingest_proxy,
    ):
        # Send the worker to ingest through the proxy: restart it with that URL.
        assert pipeline.worker is not None
        pipeline.worker.stop()
        pipeline.env["CLOUDLOG_INGEST_URL"] = ingest_proxy.url
        pipeline.start_worker()

        lines = NumberedLines(pipeline.emulator_url)
        ingest_proxy.stall("other", seconds=STALL_S, first=1)
        for number in range(LINES):
            lines.emit(number)
        assert lines.state.flush(10)
        deadline = time.monotonic() + 30
        while ingest_proxy.injected()["stall"] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ingest_proxy.injected()["stall"] == 1, "a batch is on its way to ingest"
        pipeline.worker.kill()  # the batch still reaches ingest; its message is never acked
        time.sleep(STALL_S + 1)
        pipeline.start_worker()  # SQS redelivers after the visibility timeout

        assert lines.close()
        counts = wait_for_lines(
            pipeline.emulator_url,
            pipeline.stored_group(lines.group),
            lines.stream,
            LINES,
            timeout=90,
        )
    assert_exactly_once(counts, LINES)
