"""`cloudlog tenant` commands run at once, as real processes: every command that says it
succeeded has taken effect (issue 14, item 11), a corrupt registry is refused and left as it
is, a held lock times out with a clear error, and the files cloudlog creates are private.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from cloudlog_ingest.tenants import TenantRegistry, registry_lock

pytestmark = pytest.mark.integration

TIMEOUT = 120  # seconds for a batch of processes on a busy 2-core machine


def tenant_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "cloudlog_cli", "tenant", *args]


def environment(path: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "CLOUDLOG_TENANTS_PATH": str(path), **extra}


def run_at_once(
    commands: list[list[str]], env: dict[str, str]
) -> list[subprocess.CompletedProcess[str]]:
    """Start every command before waiting for any."""
    processes = [
        subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for command in commands
    ]
    results = []
    for command, process in zip(commands, processes, strict=True):
        stdout, stderr = process.communicate(timeout=TIMEOUT)
        results.append(subprocess.CompletedProcess(command, process.returncode, stdout, stderr))
    return results


def printed(result: subprocess.CompletedProcess[str]) -> dict[str, object]:
    assert result.returncode == 0, (result.args, result.returncode, result.stderr)
    document: dict[str, object] = json.loads(result.stdout)
    return document


def leftovers(folder: Path) -> list[str]:
    return sorted(
        p.name for p in folder.iterdir() if p.name not in {"tenants.json", "tenants.json.lock"}
    )


def test_eight_creates_at_once_all_exit_0_and_every_printed_key_works(tmp_path: Path) -> None:
    path = tmp_path / "tenants.json"
    names = [f"t{n}" for n in range(8)]
    results = run_at_once([tenant_command("create", name) for name in names], environment(path))

    keys = {str(printed(r)["name"]): str(printed(r)["api_key"]) for r in results}
    assert sorted(keys) == names
    registry = TenantRegistry.load(path)
    assert sorted(t.name for t in registry.tenants()) == names
    for name, key in keys.items():
        tenant = registry.authenticate(key)
        assert tenant is not None and tenant.name == name, f"{name}'s printed key does not work"
    assert leftovers(tmp_path) == [], "no temporary file is left behind"


@pytest.mark.parametrize("trial", range(6))
def test_a_revoke_racing_creates_is_never_lost(tmp_path: Path, trial: int) -> None:
    path = tmp_path / "tenants.json"
    _, victim_key = TenantRegistry.load(path).create("victim")
    names = [f"new{n}" for n in range(5)]
    commands = [tenant_command("create", name) for name in names]
    commands.insert(trial % 6, tenant_command("revoke", "victim"))  # its place varies by trial
    results = run_at_once(commands, environment(path))

    outputs = [printed(result) for result in results]
    revoke_output = next(o for o in outputs if o["name"] == "victim")
    assert revoke_output["revoked"] is True
    registry = TenantRegistry.load(path)
    victim = registry.get("victim")
    assert victim is not None and victim.revoked, "printed revoked: true, so it must be revoked"
    assert registry.authenticate(victim_key) is None
    for output in outputs:
        if output["name"] != "victim":
            assert registry.authenticate(str(output["api_key"])) is not None
    assert sorted(t.name for t in registry.tenants()) == sorted([*names, "victim"])


@pytest.mark.parametrize(
    "command",
    [["create", "other"], ["revoke", "acme"], ["list"]],
    ids=["create", "revoke", "list"],
)
def test_commands_refuse_a_corrupt_registry_with_one_line_and_leave_it(
    tmp_path: Path, command: list[str]
) -> None:
    path = tmp_path / "tenants.json"
    TenantRegistry.load(path).create("acme")
    truncated = path.read_text()[:40]
    path.write_text(truncated)

    result = subprocess.run(
        tenant_command(*command),
        env=environment(path),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"Error: tenant registry {path} is corrupt: not valid JSON")
    assert "Traceback" not in result.stderr
    assert path.read_text() == truncated, "a corrupt registry is never overwritten"
    assert leftovers(tmp_path) == []


def test_a_held_lock_makes_create_fail_clearly_after_its_timeout(tmp_path: Path) -> None:
    path = tmp_path / "tenants.json"
    TenantRegistry.load(path).create("acme")
    before = path.read_bytes()
    with registry_lock(path, 5):
        result = subprocess.run(
            tenant_command("create", "other"),
            env=environment(path, CLOUDLOG_TENANTS_LOCK_TIMEOUT_SECONDS="0.5"),
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
    assert result.returncode == 1 and result.stdout == ""
    assert "is locked by another writer (waited 0.5 s" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert path.read_bytes() == before


def test_the_registry_and_folder_cloudlog_creates_are_0600_and_0700(tmp_path: Path) -> None:
    path = tmp_path / "state" / "tenants.json"
    result = subprocess.run(
        ["sh", "-c", 'umask 022 && exec "$@"', "sh", *tenant_command("create", "acme")],
        env=environment(path),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    printed(result)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.with_name("tenants.json.lock").stat().st_mode) == 0o600
