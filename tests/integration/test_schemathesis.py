"""schemathesis against the service's own OpenAPI schema: no 5xx, no crashed process."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from cloudlog_devtools.localpipeline import LocalPipeline

pytestmark = pytest.mark.integration

MIN_CASES = 1_000


def test_generated_requests_never_get_a_5xx(pipeline: LocalPipeline, tmp_path: Path) -> None:
    schemathesis = Path(sys.executable).with_name("schemathesis")
    result = subprocess.run(
        [
            str(schemathesis),
            "run",
            f"{pipeline.ingest_url}/openapi.json",
            "--header",
            f"Authorization: Bearer {pipeline.api_key}",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            "500",
            "--generation-deterministic",
            "--report",
            "junit",
            "--report-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=480,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    generated = re.search(r"(\d+) generated, (\d+) passed", result.stdout)
    assert generated is not None, result.stdout[-2000:]
    print(generated.group(0))
    assert int(generated.group(1)) >= MIN_CASES
    assert generated.group(1) == generated.group(2)
    assert "Operations:       3 selected / 3 total" in result.stdout
    assert pipeline.ingest is not None and pipeline.ingest.alive(), "ingest did not crash"
    assert "Traceback" not in pipeline.ingest.log_text()
