"""Starting and stopping the pipeline's processes: used by ``cloudlog dev``, tests and benchmarks.

Each child runs in its own session, so a terminal's Ctrl-C reaches only the parent, which then
stops the children by their own process id, in order: SIGTERM, a grace period, then SIGKILL.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

import httpx

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def port_in_use(port: int, host: str = LOOPBACK) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


class ProcessFailed(RuntimeError):
    pass


class ManagedProcess:
    """A child process with its output in a log file."""

    def __init__(
        self,
        name: str,
        args: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        log_dir: Path,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.args = list(args)
        self.env = dict(env) if env is not None else dict(os.environ)
        self.log_path = log_dir / f"{name}.log"
        self.cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._log_offset = 0

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> ManagedProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self._log_offset = self._log.tell()  # a restart appends: read only what this run wrote
        self.process = subprocess.Popen(
            self.args,
            env=self.env,
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_text(self) -> str:
        """What this run of the process has written so far."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(self._log_offset)
                return log.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def signal(self, signum: int) -> None:
        if self.alive():
            os.kill(self.pid, signum)

    def kill(self) -> None:
        """kill -9, as a crash would."""
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)
            assert self.process is not None
            self.process.wait(timeout=10)

    def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM, wait ``grace`` seconds, then SIGKILL. Returns the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.process.returncode

    def wait_until_ready(self, check_url: str, timeout: float = 30.0) -> None:
        """Poll ``check_url`` until it answers below 500; fail early if the process exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise ProcessFailed(f"{self.name} exited early:\n{self.log_tail()}")
            try:
                if httpx.get(check_url, timeout=1.0).status_code < 500:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise ProcessFailed(f"{self.name} not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def wait_for_log(self, text: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise ProcessFailed(f"{self.name} exited early:\n{self.log_tail()}")
            if text in self.log_text():
                return
            time.sleep(0.1)
        raise ProcessFailed(f"{self.name}: no {text!r} after {timeout:.0f} s:\n{self.log_tail()}")


def cloudlog_command(*args: str) -> list[str]:
    """The ``cloudlog`` CLI as a child command, with this interpreter."""
    return [sys.executable, "-m", "cloudlog_cli", *args]


def pipeline_env(endpoint_url: str, ingest_url: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "CLOUDLOG_AWS_ENDPOINT_URL": endpoint_url,
            "CLOUDLOG_INGEST_URL": ingest_url,
            "AWS_ACCESS_KEY_ID": env.get("AWS_ACCESS_KEY_ID", "testing"),
            "AWS_SECRET_ACCESS_KEY": env.get("AWS_SECRET_ACCESS_KEY", "testing"),
            "AWS_DEFAULT_REGION": env.get("AWS_DEFAULT_REGION", "us-east-1"),
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env
