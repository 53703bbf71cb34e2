"""Tenants in a DynamoDB table (issue 15), against real processes: the emulator from devtools
(which creates the table), three ingest replicas on the same table, and the ``cloudlog tenant``
commands as child processes (``python -m cloudlog_cli``).

A change made by one command is seen by every replica within CLOUDLOG_TENANTS_RELOAD_SECONDS
(the default, 1 s; the tests allow 2 s from the command's exit); concurrent creates never lose
one another and never let two overlapping prefixes both in.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from cloudlog_core.aws import AwsSettings
from cloudlog_devtools.processes import (
    LOOPBACK,
    ManagedProcess,
    cloudlog_command,
    free_port,
    pipeline_env,
)
from cloudlog_ingest.tenant_table import DynamoTenantStore, dynamodb_client
from cloudlog_ingest.tenants import RegistryLocked, TenantError
from tests.conftest import log_event

pytestmark = pytest.mark.integration

TABLE = "cloudlog-tenants-it"
REPLICAS = 3
WITHIN_SECONDS = 2.0  # the bound; the reload interval is the default 1 s
METRICS_TOKEN = "tenant-table-scrape-token"
SCRAPER = {"Authorization": f"Bearer {METRICS_TOKEN}"}
EMULATOR_READY_TEXT = "emulator ready"


@dataclass
class Cluster:
    emulator_url: str
    replicas: list[str]  # ingest URLs
    env: dict[str, str]  # for the cloudlog commands
    processes: list[ManagedProcess]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    state = Path(tmp_path_factory.mktemp("tenant-table"))
    emulator_url = f"http://{LOOPBACK}:{free_port()}"
    env = pipeline_env(
        emulator_url,
        "http://unused",
        CLOUDLOG_TENANTS_TABLE=TABLE,
        # Never read: the table is the registry. A file here would be a bug.
        CLOUDLOG_TENANTS_PATH=str(state / "must-not-exist" / "tenants.json"),
        CLOUDLOG_INGEST_METRICS_TOKEN=METRICS_TOKEN,
    )
    processes: list[ManagedProcess] = []
    try:
        emulator = ManagedProcess(
            "emulator",
            cloudlog_command("emulator", "--port", emulator_url.rsplit(":", 1)[1]),
            env=env,
            log_dir=state,
        ).start()
        processes.append(emulator)
        emulator.wait_for_log(EMULATOR_READY_TEXT, timeout=60)
        replicas = []
        for index in range(REPLICAS):
            port = free_port()
            url = f"http://{LOOPBACK}:{port}"
            replica = ManagedProcess(
                f"ingest-{index}",
                cloudlog_command("ingest", "--port", str(port)),
                env={
                    **env,
                    "CLOUDLOG_INGEST_URL": url,
                    "CLOUDLOG_INGEST_JOURNAL_PATH": str(state / f"ingest-{index}.journal"),
                },
                log_dir=state,
            ).start()
            processes.append(replica)
            replicas.append(url)
        for process, url in zip(processes[1:], replicas, strict=True):
            process.wait_until_ready(f"{url}/healthz", timeout=60)
        yield Cluster(emulator_url, replicas, env, processes)
    finally:
        for process in reversed(processes):
            process.stop()
    assert not (state / "must-not-exist").exists()


def tenant_command(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cloudlog_cli", "tenant", *args],
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def created(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert result.returncode == 0, result.stderr
    shown: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return shown


def status(url: str, key: str) -> int:
    """What one replica answers a one-event batch sent with ``key``: 401 when refused."""
    return httpx.post(
        f"{url}/v1/logs",
        json={"events": [log_event("app")]},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    ).status_code


def seconds_until(cluster: Cluster, key: str, accepted: bool, timeout: float = 10.0) -> float:
    """Seconds until every replica accepts (200) or refuses (401) ``key``, polled every 50 ms."""
    start = time.monotonic()
    pending = set(cluster.replicas)
    while pending and time.monotonic() - start < timeout:
        for url in sorted(pending):
            code = status(url, key)
            assert code in (200, 401), code
            if (code == 200) is accepted:
                pending.discard(url)
        if pending:
            time.sleep(0.05)
    assert not pending, f"{sorted(pending)} still {'refuse' if accepted else 'accept'} the key"
    return time.monotonic() - start


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:6]}"


def test_revoke_is_refused_by_every_replica_within_two_seconds(cluster: Cluster) -> None:
    name = unique("rev")
    key = created(tenant_command(cluster, "create", name, "--rate", "1e6"))["api_key"]
    assert seconds_until(cluster, key, accepted=True) < WITHIN_SECONDS

    result = tenant_command(cluster, "revoke", name)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["revoked"] is True
    took = seconds_until(cluster, key, accepted=False)
    print(f"revoked: refused by all {REPLICAS} replicas {took:.2f} s after the command exited")
    assert took < WITHIN_SECONDS
    for url in cluster.replicas:  # and stays refused
        assert status(url, key) == 401


def test_eight_creates_at_once_all_take_effect(cluster: Cluster) -> None:
    names = [unique(f"eight{index}") for index in range(8)]
    commands = [
        subprocess.Popen(
            [sys.executable, "-m", "cloudlog_cli", "tenant", "create", name, "--rate", "1e6"],
            env=cluster.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in names
    ]
    outputs = [command.communicate(timeout=120) for command in commands]
    assert [command.returncode for command in commands] == [0] * 8, [e for _, e in outputs]
    keys = [json.loads(out.strip().splitlines()[-1])["api_key"] for out, _ in outputs]
    assert len(set(keys)) == 8
    start = time.monotonic()
    for key in keys:
        seconds_until(cluster, key, accepted=True)
    print(
        f"eight creates: all keys accepted by all replicas {time.monotonic() - start:.2f} s later"
    )
    listed = tenant_command(cluster, "list")
    assert listed.returncode == 0, listed.stderr
    shown = [json.loads(line) for line in listed.stdout.splitlines()]
    assert set(names) <= {entry["name"] for entry in shown}
    assert all("key_sha256" not in entry and "api_key" not in entry for entry in shown)


@pytest.mark.parametrize("round_", range(3))
def test_two_overlapping_creates_at_once_exactly_one_wins(cluster: Cluster, round_: int) -> None:
    base = uuid.uuid4().hex[:6]
    prefixes = [f"shared{base}/", f"SHARED{base}/team/"]  # overlapping, case aside
    names = [unique("ovl-a"), unique("ovl-b")]
    commands = [
        subprocess.Popen(
            [sys.executable, "-m", "cloudlog_cli", "tenant", "create", name, "--prefix", prefix],
            env=cluster.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, prefix in zip(names, prefixes, strict=True)
    ]
    outputs = [command.communicate(timeout=120) for command in commands]
    codes = [command.returncode for command in commands]
    assert sorted(codes) == [0, 1], outputs
    loser = codes.index(1)
    message = outputs[loser][1].strip()
    assert message.startswith("Error: log group prefix "), message
    assert "overlaps tenant" in message and names[1 - loser] in message, message
    listed = {
        json.loads(line)["name"] for line in tenant_command(cluster, "list").stdout.splitlines()
    }
    assert names[1 - loser] in listed and names[loser] not in listed


def test_rotate_refuses_the_old_key_and_accepts_the_new(cluster: Cluster) -> None:
    name = unique("rot")
    old = created(tenant_command(cluster, "create", name, "--rate", "1e6"))["api_key"]
    assert seconds_until(cluster, old, accepted=True) < WITHIN_SECONDS

    result = tenant_command(cluster, "rotate", name)
    rotated = created(result)
    new = rotated["api_key"]
    assert new != old and rotated["name"] == name and "key_sha256" not in rotated
    assert "cannot be shown again" in result.stderr
    took_old = seconds_until(cluster, old, accepted=False)
    took_new = seconds_until(cluster, new, accepted=True)
    print(f"rotated: old key refused by all replicas {took_old:.2f} s after the command exited")
    assert took_old < WITHIN_SECONDS and took_new < WITHIN_SECONDS

    revoked = tenant_command(cluster, "revoke", name)
    assert revoked.returncode == 0, revoked.stderr
    again = tenant_command(cluster, "rotate", name)
    assert again.returncode == 1 and "is revoked" in again.stderr


def test_keys_are_stored_only_as_hashes(cluster: Cluster) -> None:
    name = unique("hash")
    key = created(tenant_command(cluster, "create", name))["api_key"]
    client = dynamodb_client(AwsSettings(aws_endpoint_url=cluster.emulator_url))
    dump = json.dumps(client.scan(TableName=TABLE)["Items"])
    assert key not in dump and key[3:] not in dump
    assert name in dump


def test_replica_readiness_names_the_table(cluster: Cluster) -> None:
    for url in cluster.replicas:
        body = httpx.get(f"{url}/readyz", headers=SCRAPER, timeout=30).json()
        assert body["degraded"] == []
        assert f"DynamoDB table {TABLE}" in body["checks"]["tenants"]["detail"]


def test_concurrent_overlapping_creates_in_threads_let_exactly_one_in(cluster: Cluster) -> None:
    """The same race, tighter than processes can make it: eight writers released together,
    each with its own client, all claiming prefixes that overlap one another."""
    settings = AwsSettings(aws_endpoint_url=cluster.emulator_url)
    base = uuid.uuid4().hex[:6]
    barrier = threading.Barrier(8)
    outcomes: list[str] = []

    def create(index: int) -> None:
        store = DynamoTenantStore(TABLE, dynamodb_client(settings))
        prefix = f"race{base}/" + "x/" * index  # each a prefix of the next
        barrier.wait()
        try:
            store.create(f"race{base}-{index}", log_group_prefix=prefix)
            outcomes.append("created")
        except RegistryLocked as exc:
            outcomes.append(f"locked: {exc}")
        except TenantError as exc:
            outcomes.append("overlap" if "overlaps tenant" in str(exc) else f"other: {exc}")

    threads = [threading.Thread(target=create, args=(index,)) for index in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(outcomes) == ["created"] + ["overlap"] * 7, outcomes
