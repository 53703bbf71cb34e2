"""infra/localstack/up.sh and down.sh, without starting LocalStack: syntax, clear failures, and
stopping by the pid in the pid file (never anything else)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parents[2] / "infra" / "localstack"
UP = HERE / "up.sh"
DOWN = HERE / "down.sh"
# A stand-in for LocalStack: its command line names the runtime module, as the real one does.
STAND_IN = "import signal, sys, time; {ignore}time.sleep(120)"


def run(script: Path, state: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {
        **os.environ,
        "LOCALSTACK_MODE": "host",
        "LOCALSTACK_STATE_DIR": str(state),
        "LOCALSTACK_VENV": str(state / "no-venv"),
        "PROJECT_PYTHON": sys.executable,
        **env,
    }
    return subprocess.run(
        ["bash", str(script)], capture_output=True, text=True, timeout=60, env=full_env
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def stand_in(request: pytest.FixtureRequest) -> Iterator[subprocess.Popen[bytes]]:
    ignore_term = getattr(request, "param", False)
    code = STAND_IN.format(
        ignore="signal.signal(signal.SIGTERM, signal.SIG_IGN); " if ignore_term else ""
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code, "-m", "localstack.runtime.main"], start_new_session=True
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


@pytest.mark.parametrize(
    "script", ["up.sh", "down.sh", "common.sh", "init/ready.d/10-cloudlog-queues.sh"]
)
def test_scripts_parse_and_are_strict(script: str) -> None:
    path = HERE / script
    result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    if script != "common.sh":  # sourced, not run
        assert "set -euo pipefail" in path.read_text()
        assert os.access(path, os.X_OK)


def test_down_when_nothing_runs_is_a_no_op(tmp_path: Path) -> None:
    for _ in range(2):
        result = run(DOWN, tmp_path)
        assert result.returncode == 0, result.stderr
        assert "not running" in result.stderr


def test_down_stops_the_process_in_the_pid_file(
    tmp_path: Path, stand_in: subprocess.Popen[bytes]
) -> None:
    (tmp_path / "localstack.pid").write_text(f"{stand_in.pid}\n")
    result = run(DOWN, tmp_path)
    assert result.returncode == 0, result.stderr
    assert stand_in.wait(timeout=5) == -signal.SIGTERM
    assert not (tmp_path / "localstack.pid").exists()


@pytest.mark.parametrize("stand_in", [True], indirect=True)
def test_down_kills_what_ignores_sigterm_after_the_grace_period(
    tmp_path: Path, stand_in: subprocess.Popen[bytes]
) -> None:
    time.sleep(0.3)  # let it install its SIGTERM handler
    (tmp_path / "localstack.pid").write_text(f"{stand_in.pid}\n")
    started = time.monotonic()
    result = run(DOWN, tmp_path, LOCALSTACK_STOP_GRACE="1")
    assert result.returncode == 0, result.stderr
    assert "SIGKILL" in result.stderr
    assert stand_in.wait(timeout=5) == -signal.SIGKILL
    assert time.monotonic() - started < 10


def test_down_never_kills_another_process_that_got_the_pid(tmp_path: Path) -> None:
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        (tmp_path / "localstack.pid").write_text(f"{other.pid}\n")
        result = run(DOWN, tmp_path)
        assert result.returncode == 0, result.stderr
        assert "stale pid file" in result.stderr
        assert other.poll() is None
        assert not (tmp_path / "localstack.pid").exists()
    finally:
        other.kill()
        other.wait(timeout=10)


def test_up_names_the_missing_python_313(tmp_path: Path) -> None:
    result = run(UP, tmp_path, LOCALSTACK_PORT=str(free_port()), LOCALSTACK_PYTHON="/bin/false")
    assert result.returncode != 0
    assert "Python 3.13" in result.stderr
    assert not (tmp_path / "localstack.pid").exists()


def test_up_refuses_a_port_someone_else_holds(tmp_path: Path) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        result = run(UP, tmp_path, LOCALSTACK_PORT=str(port))
    assert result.returncode != 0
    assert f"127.0.0.1:{port} is already in use" in result.stderr
