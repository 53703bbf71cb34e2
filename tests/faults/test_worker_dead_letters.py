"""What ingest refuses goes to the dead-letter queue with its cause, never deleted unwritten.

Real processes (emulator, ingest, worker) and a Flask-less producer that publishes tasks with
the Celery app of ``cloudlog_wire`` and ``payload.encode``, as the Flask extension does; but with
a tenant key ingest does not know, and without masking it in ``kwargsrepr`` (a foreign producer):
the worker must keep it out of every line it writes all the same.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import time
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cloudlog_core.aws import AwsSettings, make_client
from cloudlog_devtools.localpipeline import LocalPipeline
from cloudlog_wire.broker import BrokerSettings
from cloudlog_wire.celery_app import DELIVER_TASK_NAME, create_celery
from cloudlog_wire.payload import TaskCompression, encode, events_json, task_kwargs
from tests.faults.harness import (
    LINE_PREFIX,
    assert_exactly_once,
    cloudlog_cli,
    fault_pipeline,
    wait_for_lines,
)

pytestmark = pytest.mark.faults

WRONG_KEY = "cl_" + secrets.token_urlsafe(32)
BATCHES = 6
PER_BATCH = 50
LINES = BATCHES * PER_BATCH


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPipeline]:
    with fault_pipeline(tmp_path_factory.mktemp("worker-dead-letters")) as running:
        yield running


def publish(pipeline: LocalPipeline, data: str, kwargs: dict[str, Any]) -> None:
    """One task as a producer outside Flask sends it; ``kwargsrepr`` left to Celery."""
    app = create_celery(BrokerSettings(), AwsSettings(aws_endpoint_url=pipeline.emulator_url))
    try:
        app.send_task(DELIVER_TASK_NAME, args=[data], kwargs=kwargs, retry=False)
    finally:
        app.close()


def dead_letters(pipeline: LocalPipeline) -> tuple[str, list[dict[str, Any]]]:
    out = cloudlog_cli(pipeline.emulator_url, "dlq", "list")
    return out, [json.loads(line) for line in out.splitlines()]


def worker_metric(pipeline: LocalPipeline, name: str, **labels: str) -> float:
    text = httpx.get(pipeline.worker_metrics_url, timeout=5).text
    shown = ",".join(f'{key}="{value}"' for key, value in labels.items())
    pattern = re.escape(f"{name}{{{shown}}}" if labels else name) + r" ([0-9.e+]+)"
    found = re.search(pattern, text)
    return float(found.group(1)) if found else 0.0


def rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process, in KiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    values = dict(re.findall(r"^(VmRSS|VmHWM):\s+(\d+) kB", status, re.MULTILINE))
    return int(values["VmRSS"]), int(values["VmHWM"])


def test_worker_dead_letters_a_wrong_key_with_its_cause_and_replay_writes_every_line_once(
    pipeline: LocalPipeline,
) -> None:
    group = f"faults/{uuid.uuid4().hex[:10]}"
    now = int(time.time() * 1000)
    dead_before = worker_metric(
        pipeline, "cloudlog_worker_batches_dead_lettered_total", cause="http_401"
    )
    for batch in range(BATCHES):
        events = [
            {
                "event_id": uuid.uuid4().hex,
                "timestamp": now + number,
                "log_group": group,
                "log_stream": "app",
                "level": "info",
                "message": f"{LINE_PREFIX}{number:06d}",
            }
            for number in range(batch * PER_BATCH, (batch + 1) * PER_BATCH)
        ]
        data, encoding = encode(events_json(events), TaskCompression.ZLIB)
        publish(pipeline, data, task_kwargs(encoding, len(events), WRONG_KEY))

    started = time.monotonic()
    letters: list[dict[str, Any]] = []
    out = ""
    while time.monotonic() - started < 60:
        out, letters = dead_letters(pipeline)
        if sum(letter["events"] for letter in letters) >= LINES:
            break
        time.sleep(0.5)
    took = time.monotonic() - started
    assert sum(letter["events"] for letter in letters) == LINES, letters
    # Quickly: a 401 is not retried (the retry budget would take minutes).
    assert took < 30, took
    assert {(letter["cause"], letter["status"], letter["key"]) for letter in letters} == {
        ("http_401", 401, "task")
    }
    assert all(letter["streams"] == [f"{group}/app"] for letter in letters)
    assert WRONG_KEY not in out and pipeline.api_key not in out
    dead = worker_metric(pipeline, "cloudlog_worker_batches_dead_lettered_total", cause="http_401")
    assert dead - dead_before == BATCHES
    assert pipeline.worker is not None
    worker_log = pipeline.worker.log_text()
    # Celery's "received" lines repr the producer's kwargs: shown, but masked.
    assert "'api_key': '***'" in worker_log
    assert "sent to the dead-letter queue: http_401" in worker_log
    assert WRONG_KEY not in worker_log and pipeline.api_key not in worker_log

    # The dead-lettered messages' headers (kwargsrepr, the cause's detail) hold no key either;
    # the batch's own key stays in its arguments, as in the queue it came from.
    sqs = make_client("sqs", AwsSettings(aws_endpoint_url=pipeline.emulator_url))
    dlq_url = sqs.get_queue_url(QueueName=BrokerSettings().dead_letter_queue_name)["QueueUrl"]
    peeked = sqs.receive_message(QueueUrl=dlq_url, MaxNumberOfMessages=10, VisibilityTimeout=0)
    for message in peeked.get("Messages", []):
        headers = json.loads(message["Body"])["headers"]
        assert headers["cloudlog_dead_letter"]["cause"] == "http_401"
        assert WRONG_KEY not in json.dumps(headers)

    # The operator fixes the cause: the batches go back without their refused key, and the
    # worker's own CLOUDLOG_API_KEY (the pipeline's tenant) delivers them.
    # The wrong key was one of the worker's own tenant's apps: its key may stand in.
    replayed = json.loads(cloudlog_cli(pipeline.emulator_url, "dlq", "replay", "--key", "worker"))
    assert replayed == {"replayed": len(letters)}
    counts = wait_for_lines(pipeline.emulator_url, pipeline.stored_group(group), "app", LINES)
    assert_exactly_once(counts, LINES)
    assert dead_letters(pipeline)[1] == []
    worker_log = pipeline.worker.log_text()
    assert WRONG_KEY not in worker_log and pipeline.api_key not in worker_log


def test_worker_refuses_a_decompression_bomb_to_the_dead_letter_queue_in_bounded_memory(
    pipeline: LocalPipeline,
) -> None:
    """An 87 KB task of ``[{},{},...]`` once made a worker allocate 1.76 GB (22 million events).
    It is refused to the dead-letter queue as ``oversized``, and the worker grows < 50 MB."""
    raw = b"[" + b"{}," * 22_000_000 + b"{}]"
    bomb = base64.b64encode(zlib.compress(raw, 9)).decode()
    del raw
    assert len(bomb) < 100_000
    assert pipeline.worker is not None
    pid = pipeline.worker.pid
    rss_before, hwm_before = rss_kib(pid)
    # No event_count: a worker that counted by parsing would build all 22 million events.
    publish(pipeline, bomb, {"encoding": "zlib+base64", "api_key": WRONG_KEY})
    started = time.monotonic()
    letters: list[dict[str, Any]] = []
    while time.monotonic() - started < 60:
        letters = [letter for letter in dead_letters(pipeline)[1] if letter["cause"] == "oversized"]
        if letters:
            break
        time.sleep(0.5)
    rss_after, hwm_after = rss_kib(pid)
    growth_mib = (hwm_after - rss_before) / 1024
    print(
        f"worker RSS before {rss_before / 1024:.1f} MiB (peak {hwm_before / 1024:.1f}), after "
        f"{rss_after / 1024:.1f} MiB (peak {hwm_after / 1024:.1f}): "
        f"peak growth {growth_mib:.1f} MiB"
    )
    ((letter,),) = [letters]
    assert letter["events"] == 0 and "more than" in (letter["error"] or "")
    assert "more than" in (letter["detail"] or "")
    assert growth_mib < 50, growth_mib
    assert pipeline.worker.alive()
    # Leave the queue as found for the test that may run next in this module.
    assert WRONG_KEY not in pipeline.worker.log_text()
