"""A load balancer whose answers make the worker's HTTP client raise: never a lost line.

Real processes; the worker reaches ingest through ``HttpFaultProxy``. For a few seconds every
answer is broken, in one of two ways:

- ``bad_encoding``: a 200 declaring gzip over bytes that are not gzip. httpx raises
  ``DecodingError`` while reading the body, which is not a transport error: an exception inside
  the task, retried ``CLOUDLOG_MAX_EXCEPTION_RETRIES`` times, then dead-lettered as
  ``unexpected_error``;
- ``cut``: a 200 that closes the connection mid-body (``RemoteProtocolError``): retried as a
  connection failure ``CLOUDLOG_MAX_RETRIES`` times, then dead-lettered as ``retries_exhausted``.

Lines logged during the fault end in the dead-letter queue, lines logged after it in CloudWatch;
at every point each line is in exactly one of the two (read back from CloudWatch, and decoded from
the dead-lettered messages). After ``cloudlog dlq replay`` every line is in CloudWatch once.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from cloudlog_cli.dlq import batch_of, decode_envelope
from cloudlog_core.aws import AwsSettings, make_client
from cloudlog_devtools.localpipeline import LocalPipeline
from cloudlog_wire.broker import BrokerSettings
from tests.faults.harness import (
    LINE_PREFIX,
    NumberedLines,
    assert_exactly_once,
    cloudlog_cli,
    read_line_counts,
    wait_for_lines,
)
from tests.faults.test_lb_maintenance_page import (
    dead_letters,
    emit_all,
    pipeline_behind_lb,
    worker_metric,
)

pytestmark = pytest.mark.faults

DURING = 200  # lines logged while the answers are broken
AFTER = 100  # lines logged once they are not
LINES = DURING + AFTER
FAULT_SECONDS = 8.0
# A short retry budget so that the broken run is dead-lettered within the fault window.
ENV = {"CLOUDLOG_MAX_RETRIES": "3", "CLOUDLOG_MAX_EXCEPTION_RETRIES": "2"}
EXPECTED = {
    "bad_encoding": ("unexpected_error", "exception"),
    "cut": ("retries_exhausted", "connection"),
}


def dead_lettered_lines(pipeline: LocalPipeline) -> list[int]:
    """Line numbers in the dead-letter queue (one entry per copy), left in it, visible."""
    sqs = make_client("sqs", AwsSettings(aws_endpoint_url=pipeline.emulator_url))
    url = sqs.get_queue_url(QueueName=BrokerSettings().dead_letter_queue_name)["QueueUrl"]
    seen: dict[str, dict[str, Any]] = {}
    while True:
        messages = sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=30, WaitTimeSeconds=0
        ).get("Messages", [])
        fresh = [message for message in messages if message["MessageId"] not in seen]
        if not fresh:
            break
        for message in fresh:
            seen[message["MessageId"]] = message
    numbers = []
    for message in seen.values():
        sqs.change_message_visibility(
            QueueUrl=url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
        )
        for event in batch_of(decode_envelope(message["Body"])):
            text = json.loads(event["message"]) if event["message"].startswith("{") else None
            message_text = text["message"] if isinstance(text, dict) else event["message"]
            numbers.append(int(message_text[len(LINE_PREFIX) :]))
    return numbers


@pytest.mark.parametrize("kind", ["bad_encoding", "cut"])
def test_answers_that_make_the_client_raise_are_retried_then_dead_lettered_never_lost(
    tmp_path: Path, kind: str
) -> None:
    cause, retry_cause = EXPECTED[kind]
    with pipeline_behind_lb(tmp_path, ENV) as (pipeline, lb):
        lines = NumberedLines(pipeline.emulator_url)
        stored = pipeline.stored_group(lines.group)
        logs = make_client("logs", AwsSettings(aws_endpoint_url=pipeline.emulator_url))
        try:
            lb.fault(kind, FAULT_SECONDS)  # type: ignore[arg-type]
            fault_ends = time.monotonic() + FAULT_SECONDS
            emit_all(lines, range(DURING))
            time.sleep(max(0.0, fault_ends - time.monotonic()) + 0.5)
            emit_all(lines, range(DURING, LINES))
        finally:
            lines.close()

        # Every line ends in CloudWatch or in the dead-letter queue, never both, never twice.
        deadline = time.monotonic() + 40
        written: Any = {}
        lettered: list[int] = []
        while time.monotonic() < deadline:
            written = read_line_counts(logs, stored, lines.stream)
            lettered = dead_lettered_lines(pipeline)
            if sum(written.values()) + len(lettered) >= LINES:
                time.sleep(2)  # anything late or doubled would show by now
                written = read_line_counts(logs, stored, lines.stream)
                lettered = dead_lettered_lines(pipeline)
                break
            time.sleep(0.5)
        assert sorted([*written.elements(), *lettered]) == list(range(LINES)), (
            f"{sum(written.values())} written, {len(lettered)} dead-lettered of {LINES}; "
            f"proxy answered {dict(lb.answered)}"
        )
        assert lettered, "the lines logged during the fault were dead-lettered"
        assert set(range(DURING, LINES)) <= set(written), "after the fault, delivered"
        letters = dead_letters(pipeline)
        assert {letter["cause"] for letter in letters} == {cause}, letters
        assert lb.answered[kind] > 0
        assert worker_metric(pipeline, "cloudlog_worker_retries_total", cause=retry_cause) > 0
        assert worker_metric(
            pipeline, "cloudlog_worker_batches_dead_lettered_total", cause=cause
        ) == len(letters)
        assert pipeline.worker is not None and pipeline.worker.alive()

        replayed = cloudlog_cli(pipeline.emulator_url, "dlq", "replay")
        assert f'"replayed": {len(letters)}' in replayed
        counts = wait_for_lines(pipeline.emulator_url, stored, lines.stream, LINES, timeout=40)
        assert_exactly_once(counts, LINES)
        assert dead_letters(pipeline) == []
