"""``cloudlog dev`` as a user runs it: events read back from CloudWatch, then all children stop."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
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
    # What a second terminal needs, printed once before the read-back lines.
    assert sum(line == "for another terminal:" for line in lines) == 1
    endpoint = f"http://127.0.0.1:{emulator_port}"
    assert f"  export CLOUDLOG_AWS_ENDPOINT_URL={endpoint}   # SQS + CloudWatch Logs" in lines
    assert any(f"http://127.0.0.1:{ingest_port}" in line for line in lines)
    assert any(re.search(r"tenant +local \(prefix local/\), key cl_\S+", line) for line in lines)
    assert any(
        f"CLOUDLOG_TENANTS_PATH={tmp_path / 'tenants.json'} cloudlog tenant list" in line
        for line in lines
    )
    assert (
        f"  read back   CLOUDLOG_AWS_ENDPOINT_URL={endpoint} "
        "cloudlog tail local/cloudlog/demo --follow"
    ) in lines
    assert not any(port_in_use(port) for port in ports)
    assert {p.name for p in tmp_path.iterdir()} == {
        "dev.lock",  # held (flock) for the run's lifetime: one cloudlog dev per log folder
        "emulator.log",
        "ingest.log",
        "worker.log",
        "ingest.journal",  # ingest's idempotency journal lives with the run, not in the cwd
        "tenants.json",  # the run's own tenant, whose key the worker uses
        "tenants.json.lock",  # held by whoever writes the registry (cloudlog tenant, dev)
    }


def dev_command(emulator_port: int, ingest_port: int, app_port: int, log_dir: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "cloudlog_cli",
        "dev",
        f"--emulator-port={emulator_port}",
        f"--ingest-port={ingest_port}",
        f"--app-port={app_port}",
        f"--log-dir={log_dir}",
        "--duration=300",
    ]


def paid_orders(lines: list[str]) -> set[int]:
    return {
        int(m.group(1))
        for line in list(lines)
        if (m := re.search(r" INFO +order (\d+) paid ", line))
    }


def wait_until(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return
        time.sleep(0.2)
    raise AssertionError(what)


def test_a_second_dev_is_refused_before_it_changes_anything_and_the_first_keeps_delivering(
    tmp_path: Path,
) -> None:
    ports = (free_port(), free_port(), free_port())
    log_dir = tmp_path / "first"
    first = subprocess.Popen(
        dev_command(*ports, log_dir),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []

    def read() -> None:
        assert first.stdout is not None
        for line in first.stdout:
            lines.append(line.rstrip("\n"))

    threading.Thread(target=read, daemon=True).start()
    try:
        wait_until(
            lambda: paid_orders(lines), 90, "first dev read nothing back:\n" + "\n".join(lines)
        )
        registry = (log_dir / "tenants.json").read_bytes()
        lock = json.loads((log_dir / "dev.lock").read_text())
        assert lock["pid"] == first.pid

        # Same folder, same ports (a second `make dev`): refused by the lock, nothing changed.
        second = subprocess.run(
            dev_command(*ports, log_dir), capture_output=True, text=True, timeout=60
        )
        assert second.returncode == 1, second.stdout + second.stderr
        refusal = second.stderr.strip()
        assert len(refusal.splitlines()) == 1, refusal
        assert f"pid {first.pid}" in refusal and f"emulator port {ports[0]}" in refusal
        for flag in ("--emulator-port", "--ingest-port", "--app-port", "--log-dir"):
            assert flag in refusal, refusal
        assert "stopped" not in second.stdout, second.stdout
        assert (log_dir / "tenants.json").read_bytes() == registry  # the key is unchanged

        # Another folder but the same ports: refused by the port check, its folder untouched.
        other_dir = tmp_path / "second"
        third = subprocess.run(
            dev_command(*ports, other_dir), capture_output=True, text=True, timeout=60
        )
        assert third.returncode == 1, third.stdout + third.stderr
        assert f"emulator port {ports[0]}" in third.stderr and "--log-dir" in third.stderr
        assert not (other_dir / "tenants.json").exists()

        # The first still delivers: orders requested after the refusals are read back.
        after = max(paid_orders(lines))
        wait_until(
            lambda: max(paid_orders(lines)) >= after + 3,
            30,
            "first dev stopped delivering:\n" + "\n".join(lines),
        )
        ingest_log = (log_dir / "ingest.log").read_text()
        assert '"status":401' not in ingest_log, "the first's batches were refused"
    finally:
        if first.poll() is None:
            first.send_signal(signal.SIGINT)
        assert first.wait(timeout=60) == 0, "\n".join(lines)
    assert lines[-1] == "stopped: emulator, ingest and worker have exited"
    assert not any(port_in_use(port) for port in ports)
