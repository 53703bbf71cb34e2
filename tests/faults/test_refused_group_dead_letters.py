"""Ingest (as seen through a proxy) refuses a group with 403 for one run: dead-lettered, replayed.

Real processes; the worker reaches ingest through ``HttpFaultProxy``, which answers 403 as ingest
does for a group outside the tenant's prefix. A 403 is permanent: each batch goes to the
dead-letter queue at once with cause ``http_403`` (no retry budget spent), ``cloudlog dlq list``
shows it, and once the cause is gone ``cloudlog dlq replay`` writes every line exactly once.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.faults.harness import NumberedLines, assert_exactly_once, cloudlog_cli, wait_for_lines
from tests.faults.test_lb_maintenance_page import (
    dead_letters,
    emit_all,
    pipeline_behind_lb,
    worker_metric,
)

pytestmark = pytest.mark.faults

LINES = 300


def test_a_403_run_is_dead_lettered_with_its_cause_and_replay_writes_every_line_once(
    tmp_path: Path,
) -> None:
    with pipeline_behind_lb(tmp_path) as (pipeline, lb):
        lb.fault("status", status=403)
        lines = NumberedLines(pipeline.emulator_url)
        stored = pipeline.stored_group(lines.group)
        try:
            emit_all(lines, range(LINES))
        finally:
            lines.close()

        started = time.monotonic()
        letters: list[dict[str, Any]] = []
        while time.monotonic() - started < 30:
            letters = dead_letters(pipeline)
            if sum(letter["events"] for letter in letters) >= LINES:
                break
            time.sleep(0.5)
        assert sum(letter["events"] for letter in letters) == LINES, letters
        assert {(letter["cause"], letter["status"]) for letter in letters} == {("http_403", 403)}
        assert all(letter["retries"] == 0 for letter in letters), "a 403 is not retried"
        assert all(letter["streams"] == [f"{lines.group}/{lines.stream}"] for letter in letters)
        assert all("403" in (letter["detail"] or "") for letter in letters)
        dead = worker_metric(
            pipeline, "cloudlog_worker_batches_dead_lettered_total", cause="http_403"
        )
        assert dead == len(letters) == lb.answered["status_403"]
        assert worker_metric(pipeline, "cloudlog_worker_retries_total", cause="bad_answer") == 0

        # The cause is removed (ingest takes the group again): replay delivers each line once.
        lb.clear()
        replayed = cloudlog_cli(pipeline.emulator_url, "dlq", "replay")
        assert f'"replayed": {len(letters)}' in replayed
        counts = wait_for_lines(pipeline.emulator_url, stored, lines.stream, LINES, timeout=40)
        assert_exactly_once(counts, LINES)
        assert dead_letters(pipeline) == []
