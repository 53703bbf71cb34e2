"""``cloudlog dev`` as a user runs it: events read back from CloudWatch, then all children stop."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from cloudlog_devtools.processes import free_port, port_in_use

pytestmark = pytest.mark.integration

READ_BACK_LINE = re.compile(r"^\d{4}-\d\d-\d\dT[\d:.]+Z web INFO +checkout started for order 1 ")


def test_dev_prints_read_back_events_and_stops_every_child(tmp_path: Path) -> None:
    ports = [free_port(), free_port(), free_port()]
    emulator_port, ingest_port, app_port = ports
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "cloudlog_cli",
            "dev",
            f"--emulator-port={emulator_port}",
            f"--ingest-port={ingest_port}",
            f"--app-port={app_port}",
            "--duration=12",
            f"--log-dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert any(READ_BACK_LINE.match(line) for line in lines), result.stdout
    paid = {
        int(m.group(1)) for line in lines if (m := re.search(r" INFO +order (\d+) paid ", line))
    }
    assert {1, 2, 3, 4, 5} <= paid, result.stdout  # a request a second for 12 s, each read back
    assert lines[-1] == "stopped: emulator, ingest and worker have exited"
    assert not any(port_in_use(port) for port in ports)
    assert {p.name for p in tmp_path.iterdir()} == {
        "emulator.log",
        "ingest.log",
        "worker.log",
        "ingest.journal",  # ingest's idempotency journal lives with the run, not in the cwd
        "tenants.json",  # the run's own tenant, whose key the worker uses
        "tenants.json.lock",  # held by whoever writes the registry (cloudlog tenant, dev)
    }
