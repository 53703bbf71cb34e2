"""A load balancer in front of ingest answers 200 with an HTML maintenance page for 10 s.

Real processes (emulator, ingest, worker), the worker reaching ingest through
``cloudlog_devtools.httpfault.HttpFaultProxy``. A 200 that is not ingest's answer for every
event must not let a batch leave SQS: the worker retries it (cause ``bad_answer``) until the
load balancer passes requests through again; every line then arrives exactly once and nothing
is dead-lettered. The helpers here serve the other load-balancer and refusal tests too.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from cloudlog_devtools.httpfault import HttpFaultProxy
from cloudlog_devtools.localpipeline import LocalPipeline
from tests.faults.harness import (
    NumberedLines,
    assert_exactly_once,
    cloudlog_cli,
    fault_pipeline,
    wait_for_lines,
)

pytestmark = pytest.mark.faults

LINES = 300
MAINTENANCE_SECONDS = 10.0


@contextmanager
def pipeline_behind_lb(
    tmp_path: Path, env: dict[str, str] | None = None
) -> Iterator[tuple[LocalPipeline, HttpFaultProxy]]:
    """A fault pipeline whose worker reaches ingest through an ``HttpFaultProxy``."""
    with HttpFaultProxy() as lb:
        pipeline_env = {"CLOUDLOG_INGEST_URL": lb.url, **(env or {})}
        with fault_pipeline(tmp_path, env=pipeline_env) as pipeline:
            lb.upstream = pipeline.ingest_url
            yield pipeline, lb


def worker_metric(pipeline: LocalPipeline, name: str, **labels: str) -> float:
    text = httpx.get(pipeline.worker_metrics_url, timeout=5).text
    shown = ",".join(f'{key}="{value}"' for key, value in labels.items())
    pattern = re.escape(f"{name}{{{shown}}}" if labels else name) + r" ([0-9.e+]+)"
    found = re.search(pattern, text)
    return float(found.group(1)) if found else 0.0


def dead_letters(pipeline: LocalPipeline) -> list[dict[str, Any]]:
    out = cloudlog_cli(pipeline.emulator_url, "dlq", "list")
    return [json.loads(line) for line in out.splitlines()]


def emit_all(lines: NumberedLines, numbers: range) -> None:
    for number in numbers:
        lines.emit(number)
    assert lines.state.flush(10), lines.state.stats()


def test_a_maintenance_page_is_retried_until_ingest_answers_and_every_line_arrives_once(
    tmp_path: Path,
) -> None:
    with pipeline_behind_lb(tmp_path) as (pipeline, lb):
        lb.fault("maintenance", MAINTENANCE_SECONDS)
        started = time.monotonic()
        lines = NumberedLines(pipeline.emulator_url)
        try:
            emit_all(lines, range(LINES))
            counts = wait_for_lines(
                pipeline.emulator_url,
                pipeline.stored_group(lines.group),
                lines.stream,
                LINES,
                timeout=45,
            )
        finally:
            lines.close()
        took = time.monotonic() - started
        assert_exactly_once(counts, LINES)
        assert took >= MAINTENANCE_SECONDS, "nothing could be written through the page"
        maintenance_pages = lb.answered["maintenance"]
        assert maintenance_pages > 0
        assert lb.answered["forwarded"] > 0
        # Each maintenance page the worker received is one retry with cause bad_answer.
        retried = worker_metric(pipeline, "cloudlog_worker_retries_total", cause="bad_answer")
        assert retried == maintenance_pages, (retried, lb.answered)
        assert dead_letters(pipeline) == []
        assert (
            worker_metric(pipeline, "cloudlog_worker_batches_dead_lettered_total", cause="redrive")
            == 0
        )
        assert pipeline.worker is not None
        assert "answered 200 with a body that is not JSON" in pipeline.worker.log_text()
