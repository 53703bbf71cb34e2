"""Faults at the AWS endpoints, injected at the network by a proxy: every line still once."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.faults.harness import (
    NumberedLines,
    assert_exactly_once,
    cloudlog_cli,
    fault_pipeline,
    pipeline_behind_proxy,
    wait_for_lines,
)

pytestmark = pytest.mark.faults


def test_cloudwatch_throttling_failing_and_stalling(tmp_path: Path) -> None:
    lines_total = 600
    with pipeline_behind_proxy(tmp_path, "logs", seed=11) as (pipeline, logs_proxy):
        logs_proxy.throttle("logs.PutLogEvents", 0.3)
        logs_proxy.fail("logs.PutLogEvents", 0.1, status=503)
        logs_proxy.stall("logs.PutLogEvents", 0.05, seconds=2.0)
        lines = NumberedLines(pipeline.emulator_url)
        lines.emit_paced(lines_total, per_second=150)
        assert lines.close()
        counts = wait_for_lines(
            pipeline.emulator_url, pipeline.stored_group(lines.group), lines.stream, lines_total
        )
        injected = logs_proxy.injected()
        violations = logs_proxy.violations()
    assert_exactly_once(counts, lines_total)
    assert injected["throttle"] > 0 and injected["error"] > 0 and injected["stall"] > 0, injected
    assert violations == []


def test_sqs_down_for_20_seconds_while_the_app_keeps_logging(tmp_path: Path) -> None:
    lines_total = 2_000  # 25 s at 80 lines/s: the outage falls in the middle, within the buffer
    with pipeline_behind_proxy(tmp_path, "sqs", strict=False) as (pipeline, sqs_proxy):
        lines = NumberedLines(sqs_proxy.url)
        with lines.emitting_in_background(lines_total, per_second=80):
            time.sleep(3)
            sqs_proxy.down()
            time.sleep(20)
            sqs_proxy.up()
        assert lines.close(), lines.state.stats()
        stats = lines.state.stats()
        counts = wait_for_lines(
            pipeline.emulator_url, pipeline.stored_group(lines.group), lines.stream, lines_total
        )
    assert_exactly_once(counts, lines_total)
    assert stats["publish_failures"] > 0, "the outage was felt by the publisher"
    assert stats["dropped_events"] == 0
    # The request path never waited on the broker: an in-process request stays far below the
    # 20-second outage (a loose bound, not a speed target).
    assert lines.slowest_request_s < 2.0


def test_buffer_full_under_drop_policy_loses_exactly_what_it_counts(tmp_path: Path) -> None:
    """The documented loss window: what the drop counter reports is exactly what is missing."""
    lines_total = 600
    with pipeline_behind_proxy(tmp_path, "sqs", strict=False) as (pipeline, sqs_proxy):
        lines = NumberedLines(sqs_proxy.url, buffer_max_events=100, batch_max_events=50)
        sqs_proxy.down()
        for number in range(lines_total):
            lines.emit(number)
        dropped = lines.state.stats()["dropped_events"]
        sqs_proxy.up()
        assert lines.close(), lines.state.stats()
        counts = wait_for_lines(
            pipeline.emulator_url,
            pipeline.stored_group(lines.group),
            lines.stream,
            lines_total - dropped,
        )
    assert dropped > 0
    assert sum(counts.values()) == len(counts), "no line twice"
    missing = set(range(lines_total)) - set(counts)
    assert len(missing) == dropped
    # drop_oldest: the newest lines all arrived.
    assert set(range(lines_total - 100, lines_total)) <= set(counts)


def test_batches_past_max_retries_go_to_the_dead_letter_queue_and_replay(tmp_path: Path) -> None:
    lines_total = 120
    settings = {"CLOUDLOG_MAX_RETRIES": "1", "CLOUDLOG_MAX_RECEIVE_COUNT": "2"}
    with fault_pipeline(tmp_path, env=settings) as pipeline:
        assert pipeline.ingest is not None
        pipeline.ingest.stop()  # ingest is gone: every delivery fails
        lines = NumberedLines(pipeline.emulator_url, batch_max_events=50)
        for number in range(lines_total):
            lines.emit(number)
        assert lines.close()

        deadline = time.monotonic() + 90
        letters: list[dict[str, object]] = []
        while time.monotonic() < deadline:
            out = cloudlog_cli(pipeline.emulator_url, "dlq", "list")
            letters = [json.loads(line) for line in out.splitlines()]
            if sum(int(str(letter["events"])) for letter in letters) == lines_total:
                break
            time.sleep(1)
        assert sum(int(str(letter["events"])) for letter in letters) == lines_total, letters
        assert {letter["task"] for letter in letters} == {"cloudlog.deliver_batch"}
        assert all(letter["streams"] == [f"{lines.group}/app"] for letter in letters)

        pipeline.start_ingest()
        replayed = json.loads(cloudlog_cli(pipeline.emulator_url, "dlq", "replay"))
        assert replayed == {"replayed": len(letters)}
        assert cloudlog_cli(pipeline.emulator_url, "dlq", "list") == ""
        counts = wait_for_lines(
            pipeline.emulator_url, pipeline.stored_group(lines.group), lines.stream, lines_total
        )
    assert_exactly_once(counts, lines_total)
