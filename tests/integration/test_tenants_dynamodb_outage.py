"""The tenant table unreachable while ingest runs (issue 15): ingest keeps its last good
registry (keys keep working, revoked ones stay refused), ``/readyz`` names ``tenants`` under
``degraded`` and the log says so once; when the table answers again, ingest reads it again.
At start, an unreachable table stops ingest with one line, as a corrupt file does."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from cloudlog_devtools.processes import (
    LOOPBACK,
    ManagedProcess,
    cloudlog_command,
    free_port,
    pipeline_env,
)

pytestmark = pytest.mark.integration

TABLE = "cloudlog-tenants-outage"
METRICS_TOKEN = "tenant-outage-scrape-token"
SCRAPER = {"Authorization": f"Bearer {METRICS_TOKEN}"}


def authenticated(url: str, key: str) -> bool:
    """Whether ingest takes ``key`` (checked from the headers; the body is then refused with 422,
    so nothing is written and CloudWatch is not needed)."""
    answer = httpx.post(
        f"{url}/v1/logs",
        content=b'{"events": "not a list"}',
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        timeout=30,
    )
    assert answer.status_code in (401, 422), answer.text
    return answer.status_code == 422


def emulator(port: int, env: dict[str, str], log_dir: Path) -> ManagedProcess:
    process = ManagedProcess(
        "emulator", cloudlog_command("emulator", "--port", str(port)), env=env, log_dir=log_dir
    ).start()
    process.wait_for_log("emulator ready", timeout=60)
    return process


def create(env: dict[str, str], name: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "cloudlog_cli", "tenant", "create", name],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    key: str = json.loads(result.stdout)["api_key"]
    return key


def test_an_unreachable_table_keeps_the_last_good_registry(tmp_path: Path) -> None:
    emulator_port, ingest_port = free_port(), free_port()
    url = f"http://{LOOPBACK}:{ingest_port}"
    env = pipeline_env(
        f"http://{LOOPBACK}:{emulator_port}",
        url,
        CLOUDLOG_TENANTS_TABLE=TABLE,
        CLOUDLOG_TENANTS_RELOAD_SECONDS="0.5",
        CLOUDLOG_INGEST_JOURNAL_PATH=str(tmp_path / "ingest.journal"),
        CLOUDLOG_INGEST_METRICS_TOKEN=METRICS_TOKEN,
    )
    aws = emulator(emulator_port, env, tmp_path)
    ingest: ManagedProcess | None = None
    try:
        active = create(env, "active")
        revoked = create(env, "gone")
        result = subprocess.run(
            [sys.executable, "-m", "cloudlog_cli", "tenant", "revoke", "gone"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        ingest = ManagedProcess(
            "ingest",
            cloudlog_command("ingest", "--port", str(ingest_port)),
            env=env,
            log_dir=tmp_path,
        ).start()
        ingest.wait_until_ready(f"{url}/healthz", timeout=60)
        assert authenticated(url, active) and not authenticated(url, revoked)

        aws.stop()  # DynamoDB (and CloudWatch) gone
        deadline = time.monotonic() + 15
        degraded: list[str] = []
        while time.monotonic() < deadline and "tenants" not in degraded:
            degraded = httpx.get(f"{url}/readyz", timeout=30).json()["degraded"]
            time.sleep(0.2)
        assert "tenants" in degraded
        for _ in range(5):
            assert authenticated(url, active) and not authenticated(url, revoked)
            time.sleep(0.5)
        detail = httpx.get(f"{url}/readyz", headers=SCRAPER, timeout=30).json()
        assert f"tenant table {TABLE} cannot be read" in detail["checks"]["tenants"]["detail"]
        assert (
            "serving with the last good registry (2 tenants)"
            in (detail["checks"]["tenants"]["detail"])
        )
        metrics = httpx.get(f"{url}/metrics", headers=SCRAPER, timeout=30).text
        assert "cloudlog_ingest_tenant_registry_ok 0.0" in metrics
        assert ingest.log_text().count("keeping the last good registry") == 1
        assert "Traceback" not in ingest.log_text()

        # Back (empty: moto keeps nothing): ingest reads the table again at once.
        aws = emulator(emulator_port, env, tmp_path)
        fresh = create(env, "fresh")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not authenticated(url, fresh):
            time.sleep(0.1)
        assert authenticated(url, fresh) and not authenticated(url, active)
        assert "tenants" not in httpx.get(f"{url}/readyz", timeout=30).json()["degraded"]
    finally:
        if ingest is not None:
            ingest.stop()
        aws.stop()


def test_ingest_refuses_to_start_without_its_table_with_one_line(tmp_path: Path) -> None:
    port = free_port()
    result = subprocess.run(
        cloudlog_command("ingest", "--port", str(port)),
        env=pipeline_env(
            f"http://{LOOPBACK}:{free_port()}",  # nothing listens there
            f"http://{LOOPBACK}:{port}",
            CLOUDLOG_TENANTS_TABLE=TABLE,
            CLOUDLOG_INGEST_JOURNAL_PATH=str(tmp_path / "ingest.journal"),
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    output = (result.stdout + result.stderr).strip()
    assert len(output.splitlines()) == 1, output
    assert output.startswith(f"cloudlog ingest: not starting: tenant table {TABLE} cannot be read")
