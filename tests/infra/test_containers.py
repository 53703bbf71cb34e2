"""docker-compose.yml, the Dockerfiles and .dockerignore: valid, wired together, loopback only.

`docker compose config -q` needs no Docker engine, only the compose plugin. Where the plugin is
missing the compose file is still checked, structurally, with PyYAML (a warning says so).
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
INIT_HOOK = ROOT / "infra" / "localstack" / "init" / "ready.d" / "10-cloudlog-queues.sh"
LOCALSTACK_INIT_DIR = "/etc/localstack/init/ready.d"


def compose_command() -> list[str] | None:
    """``docker compose`` if the plugin answers, else the standalone ``docker-compose``."""
    candidates = []
    if shutil.which("docker"):
        candidates.append(["docker", "compose"])
    if shutil.which("docker-compose"):
        candidates.append(["docker-compose"])
    for command in candidates:
        try:
            probe = subprocess.run(
                [*command, "version"], capture_output=True, text=True, timeout=30, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode == 0:
            return command
    return None


def run_compose(command: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    """With the file's own defaults: no .env file, no overrides from this shell."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("COMPOSE_")}
    for key in ("LOCALSTACK_IMAGE", "LOCALSTACK_AUTH_TOKEN", "AWS_REGION", "CLOUDLOG_API_KEY"):
        env.pop(key, None)
    # An empty env file of our own: docker-compose 1.29 does not take /dev/null as one.
    with tempfile.TemporaryDirectory() as scratch:
        empty_env = Path(scratch) / "empty.env"
        empty_env.write_text("")
        return subprocess.run(
            [*command, "--env-file", str(empty_env), "-f", str(COMPOSE_FILE), *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env=env,
            cwd=ROOT,
        )


def with_defaults(text: str) -> str:
    """Compose's interpolation with an empty environment: ${VAR:-default} is its default."""
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::?-([^}]*))?\}", lambda m: m.group(1) or "", text)


def warn_no_compose() -> None:
    warnings.warn(
        "neither `docker compose` nor `docker-compose` is available: docker-compose.yml is "
        "checked structurally with PyYAML only, not by `docker compose config`",
        UserWarning,
        stacklevel=2,
    )


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The compose model: ``docker compose config`` (interpolated, normalised) where available,
    else the YAML as PyYAML reads it (merge keys resolved, ${VAR:-default} as its default)."""
    command = compose_command()
    if command is None:
        warn_no_compose()
        loaded = yaml.safe_load(with_defaults(COMPOSE_FILE.read_text()))
    else:
        result = run_compose(command, "config")
        assert result.returncode == 0, result.stderr
        loaded = yaml.safe_load(result.stdout)
    assert isinstance(loaded, dict)
    return loaded


def test_docker_compose_config_accepts_the_file() -> None:
    command = compose_command()
    if command is None:
        warn_no_compose()
        loaded = yaml.safe_load(with_defaults(COMPOSE_FILE.read_text()))
        assert isinstance(loaded, dict)
        assert set(loaded) <= {"name", "services", "volumes", "networks", "x-cloudlog-env"}
        for service in loaded["services"].values():
            assert "image" in service or "build" in service
        return
    result = run_compose(command, "config", "-q")
    assert result.returncode == 0, result.stderr


def published_ports(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(host address, published port) of each entry, in short or long syntax."""
    ports = []
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            ports.append((entry.get("host_ip", ""), str(entry.get("published", ""))))
        else:
            parts = str(entry).split(":")
            ports.append((parts[0] if len(parts) == 3 else "", parts[-2] if len(parts) > 1 else ""))
    return ports


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def test_services_and_their_wiring(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"localstack", "ingest", "worker"}

    localstack = services["localstack"]
    assert str(localstack["image"]).startswith("localstack/localstack:")
    assert environment(localstack)["SERVICES"] == "sqs,logs,dynamodb"
    assert "test" in localstack["healthcheck"]

    for name in ("ingest", "worker"):
        env = environment(services[name])
        assert env["CLOUDLOG_AWS_ENDPOINT_URL"] == "http://localstack:4566"
        assert services[name]["depends_on"]["localstack"]["condition"] == "service_healthy"
    assert environment(services["worker"])["CLOUDLOG_INGEST_URL"] == "http://ingest:8080"
    assert services["worker"]["depends_on"]["ingest"]["condition"] == "service_healthy"
    assert services["ingest"]["build"]["dockerfile"] == "Dockerfile.ingest"
    assert services["worker"]["build"]["dockerfile"] == "Dockerfile.worker"


def test_every_published_port_is_on_loopback_only(compose: dict[str, Any]) -> None:
    published = {name: published_ports(service) for name, service in compose["services"].items()}
    assert published["localstack"] == [("127.0.0.1", "4566")]
    assert published["ingest"] == [("127.0.0.1", "8080")]
    assert published["worker"] == []


def test_localstack_runs_the_queue_hook(compose: dict[str, Any]) -> None:
    mounts = []
    for volume in compose["services"]["localstack"]["volumes"]:
        if isinstance(volume, dict):
            mounts.append((str(volume["source"]), volume["target"]))
        else:
            source, target = str(volume).split(":")[:2]
            mounts.append((source, target))
    sources = [source for source, target in mounts if target == LOCALSTACK_INIT_DIR]
    assert len(sources) == 1
    assert (ROOT / sources[0]).resolve() == INIT_HOOK.parent
    assert INIT_HOOK.is_file()
    assert os.access(INIT_HOOK, os.X_OK), "LocalStack runs hooks as executables"
    result = subprocess.run(["bash", "-n", str(INIT_HOOK)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined: list[str] = []
    pending = ""
    for line in dockerfile.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        joined.append(pending + stripped)
        pending = ""
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1]) for text in joined]


@pytest.mark.parametrize(
    ("dockerfile", "command"),
    [
        ("Dockerfile.ingest", ["cloudlog-ingest", "--host", "0.0.0.0"]),
        ("Dockerfile.worker", ["cloudlog-worker"]),
    ],
)
def test_dockerfile_base_user_and_command(dockerfile: str, command: list[str]) -> None:
    steps = instructions(ROOT / dockerfile)
    assert steps[0] == ("FROM", "python:3.11-slim")
    users = [args for kind, args in steps if kind == "USER"]
    assert users, "the image must not run as root"
    assert users[-1].split(":")[0] not in ("root", "0")
    cmds = [args for kind, args in steps if kind == "CMD"]
    assert [json.loads(cmd) for cmd in cmds] == [command]
    assert any(
        kind == "RUN" and "pip install --no-deps -r requirements.lock" in args
        for kind, args in steps
    )


@pytest.mark.parametrize("service", ["ingest", "worker"])
def test_an_image_installs_its_own_distribution_at_the_locked_versions(service: str) -> None:
    """The image copies its requirements.lock and exactly the workspace folders it names, and
    that file is what `uv export` of uv.lock gives for the service's distribution now."""
    lock_file = ROOT / "services" / service / "requirements.lock"
    uv = Path(sys.executable).with_name("uv")
    exported = subprocess.run(
        [
            str(uv),
            "export",
            "--package",
            f"cloudlog-{service}",
            *("--no-dev", "--frozen", "--no-editable", "--no-hashes", "--no-header", "--quiet"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=ROOT,
    ).stdout

    def requirements(text: str) -> list[str]:
        return [line for line in text.splitlines() if line and not line.lstrip().startswith("#")]

    assert requirements(lock_file.read_text()) == requirements(exported), (
        f"{lock_file.relative_to(ROOT)} is stale: run `make lock`"
    )
    local = sorted(line.removeprefix("./") for line in requirements(exported) if line[0] == ".")
    assert f"services/{service}" in local
    copied = sorted(
        args.split()[0]
        for kind, args in instructions(ROOT / f"Dockerfile.{service}")
        if kind == "COPY" and not args.startswith("services/" + service + "/requirements")
    )
    assert copied == local
    assert "devtools" not in local and "clients/flask_ext" not in local


def test_ingest_image_exposes_8080_with_a_healthcheck_on_healthz() -> None:
    steps = instructions(ROOT / "Dockerfile.ingest")
    assert ("EXPOSE", "8080") in steps
    healthchecks = [args for kind, args in steps if kind == "HEALTHCHECK"]
    assert len(healthchecks) == 1 and "/healthz" in healthchecks[0]


def test_dockerignore_keeps_what_the_images_copy_and_drops_local_state() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def ignored(path: str) -> bool:
        return any(
            fnmatch.fnmatch(path, pattern.removeprefix("**/"))
            or fnmatch.fnmatch(path.split("/")[-1], pattern.removeprefix("**/"))
            or path.startswith(pattern.rstrip("/") + "/")
            for pattern in patterns
        )

    for dockerfile in ("Dockerfile.ingest", "Dockerfile.worker"):
        for kind, args in instructions(ROOT / dockerfile):
            if kind == "COPY":
                for source in args.split()[:-1]:
                    assert (ROOT / source).exists(), source
                    assert not ignored(source), (
                        f"{dockerfile} copies {source}, .dockerignore drops it"
                    )
    for local in (
        ".venv",
        ".git",
        "infra/localstack/.venv",
        "libs/core/src/cloudlog_core/__pycache__",
    ):
        assert ignored(local), local
