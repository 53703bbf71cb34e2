"""kill -9 and SIGTERM of the worker and of ingest in the middle of a run: every line once."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from tests.faults.harness import NumberedLines, assert_exactly_once, fault_pipeline, wait_for_lines

pytestmark = pytest.mark.faults

LINES = 1_000
RATE = 150.0  # lines a second: a 7-second run


@pytest.mark.parametrize("component", ["worker", "ingest"])
@pytest.mark.parametrize("how", ["kill", "term"])
def test_component_stopped_mid_run_then_restarted(tmp_path: Path, component: str, how: str) -> None:
    with fault_pipeline(tmp_path) as pipeline:
        lines = NumberedLines(pipeline.emulator_url)
        with lines.emitting_in_background(LINES, RATE):
            time.sleep(3)
            process = pipeline.worker if component == "worker" else pipeline.ingest
            assert process is not None and process.alive()
            if how == "kill":
                process.kill()
            else:
                process.signal(signal.SIGTERM)
                process.process.wait(timeout=60)  # type: ignore[union-attr]
            time.sleep(2)
            if component == "worker":
                pipeline.start_worker()
            else:
                pipeline.start_ingest()
        assert lines.close(), lines.state.stats()
        counts = wait_for_lines(
            pipeline.emulator_url, pipeline.stored_group(lines.group), lines.stream, LINES
        )
    assert_exactly_once(counts, LINES)
