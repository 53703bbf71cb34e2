"""A corrupt tenant registry against a real ingest process (issue 14, item 12).

Written while ingest runs: requests keep being served with the last good registry (never a
5xx), ``/readyz`` stays 200 but names the problem under ``degraded``, the log says so once.
Present at start: ingest refuses to start, with one line and a non-zero exit status.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
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
from cloudlog_ingest.tenants import TenantRegistry
from tests.conftest import log_event

pytestmark = pytest.mark.integration

RELOAD_SECONDS = 0.2
METRICS_TOKEN = "corrupt-registry-scrape-token"
SCRAPER = {"Authorization": f"Bearer {METRICS_TOKEN}"}  # /metrics and /readyz's details


def ingest_env(moto_url: str, ingest_url: str, state: Path) -> dict[str, str]:
    return pipeline_env(
        moto_url,
        ingest_url,
        CLOUDLOG_TENANTS_PATH=str(state / "tenants.json"),
        CLOUDLOG_TENANTS_RELOAD_SECONDS=str(RELOAD_SECONDS),
        CLOUDLOG_INGEST_JOURNAL_PATH=str(state / "ingest.journal"),
        CLOUDLOG_INGEST_METRICS_TOKEN=METRICS_TOKEN,
    )


@pytest.fixture
def ingest(moto_url: str, tmp_path: Path) -> Iterator[tuple[ManagedProcess, str, str]]:
    """An ingest process on a registry of one tenant; yields it, its URL and the key."""
    _, key = TenantRegistry.load(tmp_path / "tenants.json").create("acme", rate=1e6, burst=10**6)
    port = free_port()
    url = f"http://{LOOPBACK}:{port}"
    process = ManagedProcess(
        "ingest",
        cloudlog_command("ingest", "--port", str(port)),
        env=ingest_env(moto_url, url, tmp_path),
        log_dir=tmp_path,
    ).start()
    try:
        process.wait_until_ready(f"{url}/healthz", timeout=60)
        yield process, url, key
    finally:
        process.stop()


def post(url: str, key: str) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/logs",
        json={"events": [log_event("app")]},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )


def test_a_registry_corrupted_while_ingest_runs_keeps_the_last_good_one(
    ingest: tuple[ManagedProcess, str, str], tmp_path: Path
) -> None:
    process, url, key = ingest
    path = tmp_path / "tenants.json"
    assert post(url, key).status_code == 200
    good = path.read_text()
    path.write_text(good[: len(good) // 2])  # truncated in place, as a crashed editor would

    statuses, degraded = [], []
    deadline = time.monotonic() + 10 * RELOAD_SECONDS + 1
    while time.monotonic() < deadline:
        statuses.append(post(url, key).status_code)
        ready = httpx.get(f"{url}/readyz", timeout=30)
        assert ready.status_code == 200, ready.text
        degraded.append(ready.json()["degraded"])
        time.sleep(RELOAD_SECONDS / 2)
    assert set(statuses) == {200}, "served with the last good registry, never a 5xx"
    assert degraded[-1] == ["tenants"]
    body = httpx.get(f"{url}/readyz", headers=SCRAPER, timeout=30).json()
    assert f"tenant registry {path} is corrupt" in body["checks"]["tenants"]["detail"]
    metrics = httpx.get(f"{url}/metrics", headers=SCRAPER, timeout=30).text
    assert "cloudlog_ingest_tenant_registry_ok 0.0" in metrics

    log = process.log_text()
    assert log.count("keeping the last good registry") == 1, "logged once per distinct failure"
    assert "Traceback" not in log

    path.write_text(good)
    time.sleep(2 * RELOAD_SECONDS)
    assert post(url, key).status_code == 200
    assert httpx.get(f"{url}/readyz", timeout=30).json()["degraded"] == []


def test_ingest_refuses_to_start_on_a_corrupt_registry_with_one_line(
    moto_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "tenants.json"
    TenantRegistry.load(path).create("acme")
    path.write_text(path.read_text()[:30])
    port = free_port()
    result = subprocess.run(
        cloudlog_command("ingest", "--port", str(port)),
        env=ingest_env(moto_url, f"http://{LOOPBACK}:{port}", tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    output = (result.stdout + result.stderr).strip()
    assert output.splitlines() == [
        f"cloudlog ingest: not starting: tenant registry {path} is corrupt: "
        + output.split(" is corrupt: ", 1)[1]
    ]
    assert "not valid JSON" in output and "Traceback" not in output
